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


# Words of other scripts, for texts written wholly in one of them. CJK is written without
# spaces; emoji stand between Latin words, as in chat messages.
_CJK = (
    "数据库 向量 搜索 模型 查询 速度 内存 文本 语言 结果 服务器 索引 "
    "データベース 検索 文章 言語 速い 結果 東京 天気 音楽 料理"
).split()
_CYRILLIC = (
    "база данных вектор поиск модель запрос скорость память текст язык результат сервер "
    "индекс быстро медленно новый старый город река музыка погода история наука"
).split()
_EMOJI = "🚀 😀 🎉 📚 🔍 ⚡ 🌍 🍕 ❤️ 👍 🤖 ✅ 🐘 🔥 🎵 👩‍💻".split()
SCRIPTS = ("latin", "cjk", "cyrillic", "emoji")


def make_multiscript_texts(count: int, *, seed: int = 4321, max_words: int = 200) -> list[str]:
    """Texts in turn in Latin, CJK, Cyrillic and emoji-laden Latin (``SCRIPTS``), with the
    long-tailed lengths of ``make_texts``: most short, a few past a model's token limit."""
    rng = random.Random(seed)
    latin = make_texts(count, seed=seed, max_words=max_words)
    texts = []
    for i in range(count):
        words = max(2, min(max_words, int(rng.lognormvariate(2.8, 0.8))))
        script = SCRIPTS[i % len(SCRIPTS)]
        if script == "cjk":
            text = "".join(rng.choice(_CJK) for _ in range(words)) + "。"
        elif script == "cyrillic":
            text = " ".join(rng.choice(_CYRILLIC) for _ in range(words)).capitalize() + "."
        elif script == "emoji":
            text = " ".join(
                rng.choice(_EMOJI) if rng.random() < 0.3 else rng.choice(_WORDS)
                for _ in range(words)
            )
        else:
            text = latin[i]
        texts.append(text)
    return texts


# What users embed, by profile: (fewest words, most words) per text. Nearly every word of
# ``_WORDS`` is one WordPiece token, so a passage of 110-125 words is about 128 tokens and a
# document of 600-800 words runs past any small model's limit (and is truncated).
PROFILES = {"short": (5, 12), "passage": (110, 125), "document": (600, 800)}


def make_profile_texts(profile: str, count: int, *, seed: int = 2024) -> list[str]:
    """``count`` Latin texts of the lengths of ``PROFILES[profile]``, drawn uniformly."""
    low, high = PROFILES[profile]
    rng = random.Random(f"{seed}-{profile}")
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."
        for _ in range(count)
    ]
