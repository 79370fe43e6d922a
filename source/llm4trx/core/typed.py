"""The machinery of the typed config (core/schema.py declares the sections with it): one model per config section
carries both the fields the code reads and the checks made when the config is composed.

- `Section`: the base of a section's frozen dataclass, whose fields are named as the config keys.
  `XSpec.from_config(cfg.section)` reads them from a composed config node as they are (resolved, not converted:
  they were checked at compose time); an absent or missing (`???`) key takes the field's default, a field typed
  as another Section (or {name: Section}) is read from its subsection the same way, other nested values become
  plain dicts and lists.
- `check(...)`: a Section field checked at compose time, with pydantic's constraints (`ge=1`, `min_length=1`, ...;
  a `Literal[...]` annotation is a choice) and a description that the error line repeats. A field without it is
  typed for the code that reads it, not checked. `check(group=G)`: a value the code reads as a plain dict,
  checked as the Group G.
- `Group`: a pydantic model of keys that are only checked (the stages and the config translators read them from
  the config, or the code gets them as a plain dict), every field; `Closed`: one whose keys are all known (an
  unknown one is an error).
- `checks_of(model)`: the pydantic model of what is checked: the checked fields of `model` and of its
  subsections, all optional (an absent key is not checked). `check_config(model, cfg)` checks a composed config
  against it and raises ConfigError with one line naming the first bad key.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from typing_extensions import dataclass_transform

from llm4trx.core.errors import ConfigError

CHECK = "llm4trx.check"  # a Section field's metadata key: check()'s group and pydantic Field arguments


class Group(BaseModel):
    """Keys checked at compose time, every field; keys it does not declare are ignored."""

    model_config = ConfigDict(extra="ignore")


class Closed(Group):
    """A group whose keys are all known: an unknown key is an error (it would be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def plain(value: Any) -> Any:
    """A resolved config value as plain Python (dicts and lists); a missing `???` nested value stays '???'."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
    return value


def _group_of(annotation) -> type[Group] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Group) else None


def _is_section(t) -> bool:
    return isinstance(t, type) and issubclass(t, (Section, Group))


def _section_in(annotation) -> tuple[Any, bool]:
    """The Section or Group in a field's annotation (`S`, `S | None`, or `dict[str, S]`: then True)."""
    for t in (annotation, *get_args(annotation)):
        if _is_section(t):
            return t, False
        if get_origin(t) is dict and _is_section(get_args(t)[1]):
            return get_args(t)[1], True
    return None, False


def check(default: Any = None, *, group: type[Group] | None = None, **field: Any) -> Any:
    """A Section field checked when the config is composed (`...`: required); `field`: pydantic's Field arguments
    (constraints, description), and dataclasses' default_factory."""
    factory = field.pop("default_factory", dataclasses.MISSING)
    if factory is not dataclasses.MISSING or default is ...:
        default = dataclasses.MISSING
    return dataclasses.field(default=default, default_factory=factory, metadata={CHECK: (group, field)})


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, check))
class Section:
    """A section's model: every subclass is a frozen dataclass (`class X(Section, kw_only=True)`: keyword-only
    fields). `from_config(node)`: its fields read from a config section (absent or `???` keys: default); a field
    typed as another Section (or None) is read from the subsection the same way."""

    def __init_subclass__(cls, kw_only: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=kw_only)(cls)

    @classmethod
    def values_of(cls, node: DictConfig) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if not f.init or f.name not in node or OmegaConf.is_missing(node, f.name):
                continue
            value = node[f.name]
            inner, mapping = _section_in(hints[f.name])
            if inner is not None and issubclass(inner, Section) and isinstance(value, DictConfig):
                values[f.name] = (
                    {str(k): inner.from_config(v) for k, v in value.items()} if mapping else inner.from_config(value)
                )
            else:
                values[f.name] = plain(value)
        return values

    @classmethod
    def from_config(cls, node: DictConfig):
        return cls(**cls.values_of(node))


def _fields(model) -> list[tuple[str, Any, Any, dict[str, Any] | None]]:
    """(key, annotation, the group it is checked as, pydantic Field arguments or None: not checked) per field."""
    if issubclass(model, Group):
        hint = {
            n: Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            for n, f in model.model_fields.items()
        }
        return [(f.alias or n, hint[n], None, {"description": f.description}) for n, f in model.model_fields.items()]
    hints = typing.get_type_hints(model, include_extras=True)
    out = []
    for f in dataclasses.fields(model):
        group, field = f.metadata.get(CHECK, (None, None))
        out.append((f.name, hints[f.name], group, field))
    return out


@functools.cache
def checks_of(model: type) -> type[Group]:
    """The Group of what is checked in `model` (a Section or a Group; a Group with no Section in it: itself)."""
    fields: dict[str, tuple[Any, Any]] = {}
    same = issubclass(model, Group)
    for key, annotation, group, field in _fields(model):
        inner, mapping = _section_in(annotation)
        if group is not None:
            checked = group
        elif inner is not None and checks_of(inner).model_fields:
            view = checks_of(inner)
            checked = dict[str, view] if mapping else view
            same = same and view is inner
        elif field is not None:
            checked = annotation
        else:
            continue
        name = key + "_" if hasattr(BaseModel, key) else key  # `schema`, `validate`: an alias
        fields[name] = (checked, Field(None, alias=key if name != key else None, **(field or {})))
    if same:
        return model
    base = Closed if issubclass(model, Group) and model.model_config.get("extra") == "forbid" else Group
    return create_model(model.__name__, __base__=base, __module__=model.__module__, **fields)


_SKIP = object()


def _value(node: DictConfig, key: str) -> Any:
    """The resolved value of node[key] as plain Python, or _SKIP where it is absent, missing or unresolvable."""
    if key not in node or OmegaConf.is_missing(node, key):
        return _SKIP
    try:
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        return value
    except OmegaConfBaseException:
        return _SKIP


def _plain(node: DictConfig, model: type[Group]) -> dict:
    """The keys of `node` that `model` declares, as plain values (nested groups walked key by key, so one
    unresolvable key elsewhere in a group does not hide the others)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in node or OmegaConf.is_missing(node, key):
            continue
        try:
            child = node[key]
        except OmegaConfBaseException:
            continue
        group = _group_of(field.annotation)
        if group is not None and isinstance(child, DictConfig):
            out[key] = _plain(child, group)
            if group.model_config.get("extra") == "forbid":  # closed: the unknown keys too
                out[key].update({k: None for k in child if k not in group.model_fields})
            continue
        if get_origin(field.annotation) is dict and isinstance(child, DictConfig):
            inner = _group_of(get_args(field.annotation)[1])
            if inner is not None:
                out[key] = {str(k): _plain(v, inner) for k, v in child.items() if isinstance(v, DictConfig)}
                continue
        value = _value(node, key)
        if value is not _SKIP and not (group is not None and value is None):  # an optional group left out
            out[key] = value
    return out


def _key(loc: tuple) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _message(error: dict, model: type[Group]) -> str:
    loc = tuple(error["loc"])
    key = _key(loc)
    if error["type"] == "extra_forbidden":
        parent = model
        for part in loc[:-1]:
            fields = {f.alias or n: f for n, f in parent.model_fields.items()}
            parent = _group_of(fields[part].annotation) or parent
        known = ", ".join(f.alias or n for n, f in parent.model_fields.items())
        return f"{key}: unknown key; known: {known}"
    says = error["msg"].replace("Input should be", "should be").replace(" after validation", "")
    if says.startswith("List "):
        says = "should be a list" + says[len("List should") :].replace(" have", " with", 1)
    # The field's description, where it has one, says what the value means.
    parent, description = model, None
    for part in loc:
        if isinstance(part, int) or parent is None:
            break
        fields = {f.alias or n: f for n, f in parent.model_fields.items()}
        if part not in fields:
            break
        description = fields[part].description
        parent = _group_of(fields[part].annotation) or _group_of((get_args(fields[part].annotation) or [None])[-1])
    hint = f" ({description})" if description else ""
    return f"{key}={error['input']!r}: {says}{hint}"


def check_config(model: type[Group], cfg: DictConfig) -> Group:
    """Check the declared keys of a composed config; the first bad value is a ConfigError naming its key."""
    try:
        return model.model_validate(_plain(cfg, model))
    except ValidationError as err:
        raise ConfigError(_message(err.errors()[0], model)) from None
