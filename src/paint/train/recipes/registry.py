"""The one name -> recipe table, filled by one :func:`register` line per recipe class.

A config names a recipe (``recipe: lora``, or ``recipe: {name: lora, rank: 4}``);
:data:`RecipeSpec` is the field type that turns that into the registered class's instance, with
the class's own validation. The built-in recipes register when :mod:`paint.train.recipes` is
imported; a recipe defined elsewhere (a plugin, a test) registers the same way, before the config
that names it is validated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar, Union

from pydantic import PlainValidator, SerializeAsAny
from pydantic_core import PydanticCustomError

from paint.errors import PaintError
from paint.train.recipes.base import Recipe

R = TypeVar("R", bound=type[Recipe])

RECIPES: dict[str, type[Recipe]] = {}


def register(cls: R) -> R:
    """Add a recipe class to the table under its ``name`` (a class decorator; one line per recipe).

    Raises:
        PaintError: the class has no literal default ``name``, or another class holds the name.
    """
    name = cls.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise PaintError(f"recipe class {cls.__name__} needs a default name: name: Literal['my-recipe'] = 'my-recipe'")
    if RECIPES.get(name, cls) is not cls:
        raise PaintError(f"recipe {name!r} is registered already (by {RECIPES[name].__name__})")
    RECIPES[name] = cls
    return cls


def recipe_names(where: Callable[[type[Recipe]], bool] = lambda cls: True) -> list[str]:
    """The registered recipes' names (those ``where`` accepts), in registration order."""
    return [name for name, cls in RECIPES.items() if where(cls)]


def recipe_for(name: str) -> type[Recipe]:
    """The recipe class registered under ``name``."""
    if name not in RECIPES:
        raise PaintError(f"unknown fine-tuning recipe {name!r}; choose from: {', '.join(RECIPES)}")
    return RECIPES[name]


class _Choice:
    """Validates a recipe field: a name, or a mapping with one, as its registered class (of those ``where`` allows)."""

    def __init__(self, where: Callable[[type[Recipe]], bool], what: str):
        self.where, self.what = where, what

    def __call__(self, value: Any) -> Recipe:
        if isinstance(value, str):
            value = {"name": value}  # ``recipe: lora`` is short for ``recipe: {name: lora}``
        if not isinstance(value, (dict, Recipe)):
            raise PydanticCustomError("recipe_type", "a recipe is a name or a mapping with a name")
        name = value.name if isinstance(value, Recipe) else value.get("name")
        cls = RECIPES.get(name) if isinstance(name, str) else None
        allowed = ", ".join(recipe_names(self.where))
        if cls is None or not self.where(cls):
            if name is None:
                problem = f"{self.what} needs a name"
            elif cls is None:
                problem = f"unknown fine-tuning recipe {name!r}"
            else:
                problem = f"{self.what} cannot be {name!r}"
            raise PydanticCustomError("recipe_name", f"{problem}; choose from: {allowed}")
        if type(value) is cls:
            return value
        return cls.model_validate(value.model_dump() if isinstance(value, Recipe) else value)


def recipe_field(where: Callable[[type[Recipe]], bool] = lambda cls: True, what: str = "a fine-tuning recipe") -> Any:
    """The annotation of a config field that holds a recipe (of those ``where`` allows).

    Validation looks the name up in the table when a config is read, so a recipe registered after
    this annotation was made is accepted too. The union of the classes registered by then is what
    ``--set`` sees of the field's keys (:func:`paint.config.check_override_key`); a value is written
    back with its own class's fields.
    """
    classes = tuple(cls for cls in RECIPES.values() if where(cls)) or (Recipe,)
    return Annotated[SerializeAsAny[Union[classes]], PlainValidator(_Choice(where, what))]  # type: ignore[valid-type]
