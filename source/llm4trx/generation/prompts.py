"""Prompts of the augment stage: validated templates, the chat template, and fitting a client into the context."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import AugmentSpec

# Fields a user template may use; {format} and {analysis} come from the prompt, the rest from the client.
CLIENT_FIELDS = ("transactions", "n_events", "n_events_kept", "start_date", "end_date")
PROMPT_FIELDS = ("format", "analysis")
KNOWN_FIELDS = CLIENT_FIELDS + PROMPT_FIELDS


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    template: str  # user template with {format} and {analysis} already filled in; client fields remain


def template_fields(template: str) -> list[str]:
    """Names of the replacement fields of a Python format string (`{a}`, `{a.b}`, `{a[0]}` -> `a`)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(f"prompt template is not a valid format string ({err}): {template!r}") from err
    names = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        name = field.split(".")[0].split("[")[0]
        if not name:
            raise ConfigError(f"prompt template has a positional field '{{}}'; name it: {template!r}")
        names.append(name)
    return names


def _check_fields(where: str, template: str, known: tuple[str, ...]) -> None:
    unknown = sorted(set(template_fields(template)) - set(known))
    if unknown:
        raise ConfigError(
            f"{where} uses unknown field(s) {', '.join('{' + u + '}' for u in unknown)}; "
            f"known fields: {', '.join('{' + k + '}' for k in known)}"
        )


def build_prompts(acfg: AugmentSpec) -> list[Prompt]:
    """The prompts listed in `augment.use`, validated: every name, format, analysis and template field exists."""
    library = acfg.prompts or {}
    formats = acfg.formats or {}
    analyses = acfg.analysis or {}
    use = list(acfg.use) if acfg.use else list(library)
    if not use:
        raise ConfigError("augment.use lists no prompts and augment.prompts is empty: nothing to generate")
    if acfg.system:
        _check_fields("augment.system", acfg.system, ())
    prompts = []
    for prompt_id in use:
        if prompt_id not in library:
            raise ConfigError(f"augment.use names prompt {prompt_id!r}, not in augment.prompts: {sorted(library)}")
        spec: dict[str, Any] = library[prompt_id] or {}
        unknown_keys = sorted(set(spec) - {"format", "analysis", "template"})
        if unknown_keys:
            raise ConfigError(
                f"augment.prompts.{prompt_id}: unknown key(s) {unknown_keys}; known: format, analysis, template"
            )
        template = spec.get("template") or acfg.user_template
        _check_fields(f"augment.prompts.{prompt_id} template", template, KNOWN_FIELDS)
        fmt, analysis = spec.get("format", "free"), spec.get("analysis", "none")
        if fmt not in formats:
            raise ConfigError(f"augment.prompts.{prompt_id}: format {fmt!r} not in augment.formats {sorted(formats)}")
        if analysis not in analyses:
            raise ConfigError(
                f"augment.prompts.{prompt_id}: analysis {analysis!r} not in augment.analysis {sorted(analyses)}"
            )
        # Fill the prompt's own fields now; the client fields are re-emitted as themselves.
        filled = template.format(
            format=formats[fmt], analysis=analyses[analysis] or "", **{f: "{" + f + "}" for f in CLIENT_FIELDS}
        )
        prompts.append(Prompt(prompt_id, filled.rstrip()))
    return prompts


def has_chat_template(tokenizer, acfg: AugmentSpec) -> bool:
    mode = acfg.use_chat_template
    if mode in (False, "false"):
        return False
    present = bool(getattr(tokenizer, "chat_template", None))
    if mode in (True, "true") and not present:
        raise ConfigError("augment.use_chat_template=true but the generator's tokenizer has no chat template")
    return present


def prompt_token_ids(tokenizer, system: str | None, user: str, chat: bool) -> list[int]:
    """Token ids of one request: the chat template (which adds its own special tokens), or bos + system + user."""
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = []
    else:
        text = (system + "\n\n" if system else "") + user + "\n\n"
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer(text, add_special_tokens=False, return_token_type_ids=False)["input_ids"]
    return bos + list(ids)


class ClientPrompter:
    """Renders (client, prompt) requests whose prompt leaves room for max_tokens in the context.

    When the whole history does not fit, the oldest transactions are dropped (binary search on how many of
    the most recent ones are kept), as the text stage does for its own budget.
    """

    def __init__(self, tokenizer, acfg: AugmentSpec, context: int):
        self.tokenizer = tokenizer
        # fit() tokenizes whole histories on purpose before cutting them: silence "longer than the maximum".
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        self.render: Callable[[pd.DataFrame], str] = lambda events: ""  # set once data/ is known to exist
        self.system = acfg.system or None
        self.chat = has_chat_template(tokenizer, acfg)
        self.budget = context - int(acfg.sampling.max_tokens)

    def ids(self, prompt: Prompt, events: pd.DataFrame, n_events: int) -> list[int]:
        times = events["event_time"]
        user = prompt.template.format(
            transactions=self.render(events),
            n_events=n_events,
            n_events_kept=len(events),
            start_date=f"{times.iloc[0]:%Y-%m-%d}" if len(events) else "-",
            end_date=f"{times.iloc[-1]:%Y-%m-%d}" if len(events) else "-",
        )
        return prompt_token_ids(self.tokenizer, self.system, user, self.chat)

    def fit(self, prompt: Prompt, events: pd.DataFrame) -> tuple[list[int], int]:
        """(prompt token ids, number of most recent events kept); raises ConfigError if not even 0 events fit."""
        n_events = len(events)
        ids = self.ids(prompt, events, n_events)
        if len(ids) <= self.budget:
            return ids, len(events)
        lo, hi, best = 0, n_events - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = self.ids(prompt, events.iloc[n_events - mid :], n_events)
            if len(cand) <= self.budget:
                best, lo = (cand, mid), mid + 1
            else:
                hi = mid - 1
        if best is None:
            raise ConfigError(
                f"prompt {prompt.prompt_id!r} alone takes {len(self.ids(prompt, events.iloc[:0], n_events))} tokens, more "
                f"than the {self.budget} left by the context after augment.sampling.max_tokens; "
                "shorten the prompt or lower max_tokens"
            )
        return best
