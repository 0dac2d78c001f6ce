"""The settings form, one field per entry of the sidecar's settings schema.

The fields check type and range before anything is sent; the sidecar checks again. A setting
that names a model (type "uri", such as default_rerank_model) is a choice of the registered
models of its kind, or none. Each
field carries the value the page showed (Django's hidden initial), so that only the settings
the user changed are sent, and a value someone else changed meanwhile is not overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from console.inference_settings.service import SaveResult, Snapshot, Spec, hint_text, value_text
from inference.client import ModelFacts


def _range_messages(spec: Spec) -> dict[str, str]:
    """Out-of-range messages in the words of the hints, with the unit."""
    if spec.minimum is not None and spec.maximum is not None:
        text = spec.with_unit(f"between {hint_text(spec.minimum)} and {hint_text(spec.maximum)}")
        return {"min_value": f"Must be {text}.", "max_value": f"Must be {text}."}
    messages = {}
    if spec.minimum is not None:
        messages["min_value"] = f"Must be at least {spec.with_unit(hint_text(spec.minimum))}."
    if spec.maximum is not None:
        messages["max_value"] = f"Must be at most {spec.with_unit(hint_text(spec.maximum))}."
    return messages


def _int_field(spec: Spec) -> forms.Field:
    return forms.IntegerField(
        min_value=spec.minimum, max_value=spec.maximum, error_messages=_range_messages(spec)
    )


class _FloatField(forms.FloatField):
    """Shows 2.0 as 2, as the hints and the history do."""

    def prepare_value(self, value: Any) -> Any:
        return value_text(value) if isinstance(value, float) else super().prepare_value(value)


def _float_field(spec: Spec) -> forms.Field:
    return _FloatField(
        min_value=spec.minimum, max_value=spec.maximum, error_messages=_range_messages(spec)
    )


def _bool_field(spec: Spec) -> forms.Field:
    return forms.BooleanField(required=False)


def _choice_field(spec: Spec) -> forms.Field:
    return forms.ChoiceField(choices=[(choice, choice) for choice in spec.choices])


def _text_field(spec: Spec) -> forms.Field:
    return forms.CharField(strip=True)


# The kind of model each "uri" setting names (a setting not listed may name any model).
URI_SETTING_KINDS = {"default_rerank_model": "reranker"}
_KIND_NAMES = {"embedding": "an embedding model", "reranker": "a reranker"}
_REGISTERED = {"embedding": "a registered embedding model", "reranker": "a registered reranker"}
NONE_LABEL = "(none)"


class ModelChoiceField(forms.ChoiceField):
    """A "uri" setting: one of the registered models of its kind, or "" for none. A value the
    sidecar holds that is not one of them (set from SQL, or a model since removed) is kept as
    a choice, marked, so that the page shows it and a save that leaves it alone keeps it."""

    def __init__(self, spec: Spec, models: Sequence[ModelFacts], current: Any) -> None:
        self.wanted = URI_SETTING_KINDS.get(spec.key)
        self.kinds = {m.uri: m.kind for m in models}
        choices = [("", NONE_LABEL)]
        choices += [
            (m.uri, m.uri if m.loaded else f"{m.uri} (registered, not loaded)")
            for m in sorted(models, key=lambda m: m.uri)
            if self.wanted is None or m.kind == self.wanted
        ]
        self.kept = str(current or "")
        if self.kept and self.kept not in {value for value, _ in choices}:
            why = "not registered" if self.kept not in self.kinds else self.kind_name(self.kept)
            choices.append((self.kept, f"{self.kept} ({why})"))
        super().__init__(choices=choices, required=False)

    @property
    def what(self) -> str:
        return _KIND_NAMES.get(self.wanted or "", "a model")

    def kind_name(self, uri: str) -> str:
        return _KIND_NAMES.get(self.kinds.get(uri, ""), "a model")

    def validate(self, value: Any) -> None:
        if value and value != self.kept and not self.valid_value(value):
            if value in self.kinds:
                reason = f"{value} is {self.kind_name(value)}, not {self.what}"
            else:
                reason = f"{value} is not {self.what} the inference sidecar has registered"
            raise ValidationError(
                f"{reason}: choose one from the list, or {NONE_LABEL}.", code="invalid_choice"
            )
        super().validate(value)

    @property
    def hint(self) -> str:
        return f"{_REGISTERED.get(self.wanted or '', 'a registered model')}, or {NONE_LABEL}"


FIELD_BY_KIND: dict[str, Callable[[Spec], forms.Field]] = {
    "int": _int_field,
    "float": _float_field,
    "bool": _bool_field,
    "choice": _choice_field,
}


def _field(
    spec: Spec,
    *,
    read_only: bool,
    models: Sequence[ModelFacts] = (),
    current: Any = None,
) -> forms.Field:
    if spec.kind == "uri":
        field: forms.Field = ModelChoiceField(spec, models, current)
    else:
        field = FIELD_BY_KIND.get(spec.kind, _text_field)(spec)
    field.label = spec.key
    field.help_text = spec.help
    field.disabled = read_only
    field.show_hidden_initial = True
    # The hint (default, range), the explanation and the error, read with the field.
    described_by = f"hint-{spec.key} help-{spec.key} error-{spec.key}"
    field.widget.attrs.update({"aria-describedby": described_by, "class": "setting-input"})
    if spec.kind in {"int", "float"}:
        field.widget.attrs["inputmode"] = "numeric" if spec.kind == "int" else "decimal"
    return field


@dataclass(frozen=True)
class Row:
    spec: Spec
    field: forms.BoundField
    current: Any  # the value the sidecar reports

    @property
    def modified(self) -> bool:
        return self.current != self.spec.default

    @property
    def current_text(self) -> str:
        if self.spec.kind == "uri" and not self.current:
            return NONE_LABEL
        return hint_text(self.current)

    @property
    def default_text(self) -> str:
        if self.spec.kind == "uri" and not self.spec.default:
            return NONE_LABEL
        return hint_text(self.spec.default)

    @property
    def range_text(self) -> str:
        """The allowed values, for the hint beside the field."""
        if isinstance(self.field.field, ModelChoiceField):
            return self.field.field.hint
        return self.spec.range_text


class SettingsForm(forms.Form):
    def __init__(
        self,
        snapshot: Snapshot,
        data: Mapping[str, Any] | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        specs = {spec.key: spec for spec in snapshot.specs}
        current = {key: snapshot.values.get(key, spec.default) for key, spec in specs.items()}
        super().__init__(data=data, initial=current)
        self.specs = specs
        self.current = current
        for key, spec in specs.items():
            self.fields[key] = _field(
                spec, read_only=read_only, models=snapshot.models, current=current[key]
            )

    def rows(self) -> Iterator[Row]:
        for key, spec in self.specs.items():
            yield Row(spec=spec, field=self[key], current=self.current[key])

    def changes(self) -> dict[str, Any]:
        """The settings the user changed, with their new values (after ``is_valid``)."""
        return {key: self.cleaned_data[key] for key in self.changed_data}

    def seen(self) -> dict[str, Any]:
        """The values the page showed for the changed settings, where it sent them."""
        shown: dict[str, Any] = {}
        for key in self.changed_data:
            bound = self[key]
            hidden = bound.field.hidden_widget()
            raw = hidden.value_from_datadict(self.data, self.files, bound.html_initial_name)
            if raw is None:
                continue
            try:
                shown[key] = bound.field.to_python(raw)
            except ValidationError:
                continue
        return shown

    def refuse(self, result: SaveResult) -> None:
        """Put the reasons nothing was applied beside their fields."""
        for key, message in result.errors.items():
            self.add_error(key if key in self.fields else None, message)
        for key, now in result.conflicts.items():
            shown = self.specs[key].with_unit(value_text(now))
            self.add_error(
                key,
                f"Someone else changed this to {shown} since this page was read. The page "
                "now shows that as the current value: save again to replace it with yours, "
                "or Discard.",
            )
        if result.conflicts:
            # Saving again compares with what the sidecar holds now.
            self.current = {**self.current, **result.conflicts}
            self.data = self.data.copy()
            for key, now in result.conflicts.items():
                self.data[self[key].html_initial_name] = self[key].field.prepare_value(now)
