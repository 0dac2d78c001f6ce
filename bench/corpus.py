"""Deterministic benchmark texts of varied length and script, shared by the benchmarks."""

from __future__ import annotations

import random

_WORDS = (
    "database server index vector query table row column embedding model search semantic "
    "similar nearest neighbour distance cosine latency throughput memory thread batch token "
    "language document passage question answer customer order product price review weather "
    "river mountain city music history science energy market health travel kitchen garden "
    "the a of to and in is was for on with as by at from it this that be are or not fast "
    "slow new old good small large first last many few every some quickly carefully today "
).split()
_OTHER = [
    "数据库中的向量搜索非常快速",
    "Векторный поиск в базе данных работает быстро",
    "البحث المتجهي في قاعدة البيانات سريع جدا",
    "डेटाबेस में वेक्टर खोज बहुत तेज़ है",
    "Die Vektorsuche in der Datenbank ist schnell 🚀",
]


def make_texts(count: int, *, seed: int = 1234, max_words: int = 120) -> list[str]:
    """Sentences whose lengths follow a long-tailed distribution (most short, some long)."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = max(3, min(max_words, int(rng.lognormvariate(2.8, 0.7))))
        text = " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."
        if i % 17 == 0:
            text = f"{rng.choice(_OTHER)} {text}"
        texts.append(text)
    return texts
