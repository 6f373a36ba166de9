"""Per-text options of the feature-extraction task, checked once per call.

The names and meanings follow the Hugging Face Inference API (`normalize`, `prompt_name`,
`truncate`, `truncation_direction`), so a batch vector equals what that API returns for the
same text and options. `truncation_direction` is accepted in any case ("Left", "right").
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.model_dir import ModelCard

DIRECTIONS = ("left", "right")


class OptionError(ValueError):
    """An option value no text can be embedded with; the message names the option and the fix."""


@dataclass(frozen=True)
class EmbedOptions:
    normalize: bool = True
    prompt_name: str | None = None
    truncate: bool = True
    truncation_direction: str = "right"

    def __post_init__(self) -> None:
        for name in ("normalize", "truncate"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise OptionError(f"{name} must be true or false, got {value!r}")
        if self.prompt_name is not None and not isinstance(self.prompt_name, str):
            raise OptionError(f"prompt_name must be a string or null, got {self.prompt_name!r}")
        direction = self.truncation_direction
        if not isinstance(direction, str) or direction.lower() not in DIRECTIONS:
            raise OptionError(
                f"truncation_direction must be 'left' or 'right' (any case), got {direction!r}"
            )
        object.__setattr__(self, "truncation_direction", direction.lower())


def prompt_for(card: ModelCard, options: EmbedOptions, model: str | None = None) -> str:
    """The prompt text the model reads before each text: the named one, else the card's default
    prompt, else none. An unknown name is an error that lists the model's prompts and names the
    model as `model` (default: the card's source; a server passes its model id, since a source
    can be a path on the server)."""
    name = options.prompt_name or card.default_prompt_name
    model = model or card.source
    if name is None:
        return ""
    if not card.prompts:
        raise OptionError(
            f"prompt_name {name!r} given, but model {model} has no prompts; leave prompt_name unset"
        )
    if name not in card.prompts:
        raise OptionError(
            f"unknown prompt_name {name!r}; model {model} has the prompts: "
            + ", ".join(sorted(card.prompts))
        )
    return card.prompts[name]
