"""The encoder registry: the built-in encoders and those that installed packages register.

A package adds a modality without forking this one: it subclasses
:class:`~jepa_lightning.encoders.ModalityEncoder` and registers the class under the entry-point
group ``jepa_lightning.encoders`` in its ``pyproject.toml``::

    [project.entry-points."jepa_lightning.encoders"]
    audio = "jepa_lightning_audio:AudioEncoder"

Once the package is installed, the registered name stands for the class in a config
(``class_path: audio``); the ``jepa-lightning`` CLI resolves it (see :func:`resolve_names`) and
loads every installed plugin before it parses, so that a plugin's class is also known by its
class name (``class_path: AudioEncoder``). :func:`available` lists what is registered. A plugin
that cannot be loaded fails with an :class:`EncoderPluginError` naming its entry point.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jepa_lightning.encoders.base import ModalityEncoder

__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "EncoderPluginError",
    "RegisteredEncoder",
    "available",
    "load_encoder_class",
    "load_plugins",
    "resolve_names",
]

ENTRY_POINT_GROUP = "jepa_lightning.encoders"
"""The entry-point group under which packages register their encoders."""

BUILT_IN: dict[str, str] = {
    "vision": "jepa_lightning.encoders.vision:VisionEncoder",
    "text": "jepa_lightning.encoders.text:TextEncoder",
}
"""The encoders of this package, by registered name (entry-point syntax, ``module:class``)."""


class EncoderPluginError(ValueError):
    """A registered encoder that cannot be used; the message names its entry point."""


@dataclass(frozen=True)
class RegisteredEncoder:
    """One registered encoder, not yet imported.

    Attributes:
        name: The registered name (what a config's ``class_path`` may say).
        target: Where the class is, in entry-point syntax: ``module:Class``.
        distribution: The installed package that registers it; None for a built-in encoder.
    """

    name: str
    target: str
    distribution: str | None = None

    @property
    def class_path(self) -> str:
        """The dotted import path of the class (``module.Class``)."""
        return self.target.replace(":", ".")

    @property
    def origin(self) -> str:
        """Where the registration comes from, as error messages name it."""
        if self.distribution is None:
            return f"built-in encoder {self.name!r} ({self.target})"
        return (
            f"entry point {self.name!r} = {self.target!r} (group {ENTRY_POINT_GROUP!r}, "
            f"package {self.distribution!r})"
        )

    def load(self) -> type[ModalityEncoder]:
        """Imports the registered class.

        Returns:
            The class.

        Raises:
            EncoderPluginError: If the import fails (the message names the entry point and
                the error) or the object is not a ``ModalityEncoder`` subclass.
        """
        from jepa_lightning.encoders.base import ModalityEncoder

        try:
            loaded = EntryPoint(self.name, self.target, ENTRY_POINT_GROUP).load()
        except Exception as error:  # a plugin's import can raise anything
            # The message says it all; error reporters that print the innermost cause would
            # drop the entry point, so the cause is not chained (its traceback is kept).
            message = f"{self.origin} cannot be loaded: {type(error).__name__}: {error}"
            raise EncoderPluginError(message).with_traceback(error.__traceback__) from None
        if not (isinstance(loaded, type) and issubclass(loaded, ModalityEncoder)):
            raise EncoderPluginError(
                f"{self.origin} is not a jepa_lightning.encoders.ModalityEncoder subclass: "
                f"{loaded!r}"
            )
        return loaded


def available() -> dict[str, RegisteredEncoder]:
    """The built-in and installed encoders, by registered name; nothing is imported.

    Returns:
        Registered name → :class:`RegisteredEncoder`, sorted by name.

    Raises:
        EncoderPluginError: If two registrations claim one name (naming both).
    """
    found = {name: RegisteredEncoder(name, target) for name, target in BUILT_IN.items()}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        distribution = point.dist.name if point.dist is not None else "unknown"
        entry = RegisteredEncoder(point.name, point.value, distribution)
        known = found.setdefault(point.name, entry)
        if known != entry:  # the same package seen twice on sys.path is no clash
            raise EncoderPluginError(
                f"two encoders are registered as {point.name!r}: {known.origin} and "
                f"{entry.origin}; uninstall one of the packages"
            )
    return dict(sorted(found.items()))


def load_encoder_class(name: str) -> type[ModalityEncoder]:
    """Imports the encoder class registered as ``name``.

    Args:
        name: A registered name (see :func:`available`).

    Returns:
        The class.

    Raises:
        EncoderPluginError: If no encoder is registered as ``name``, or it cannot be loaded.
    """
    registered = available()
    if name not in registered:
        raise EncoderPluginError(
            f"no encoder is registered as {name!r}; registered: {', '.join(registered)} "
            f"(a package registers one under the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    return registered[name].load()


def load_plugins() -> list[type[ModalityEncoder]]:
    """Imports every installed plugin encoder, so that a parser knows them by class name.

    A plugin that cannot be loaded is reported with one warning naming its entry point and
    left out: it fails only the configs that name it.

    Returns:
        The loaded classes.
    """
    loaded = []
    for entry in available().values():
        if entry.distribution is None:
            continue
        try:
            loaded.append(entry.load())
        except EncoderPluginError as error:
            warnings.warn(f"{error}; configs that name it will fail", stacklevel=2)
    return loaded


def resolve_names(document: Any) -> Any:
    """Replaces registered names in a config's ``class_path`` values by dotted class paths.

    A ``class_path`` that holds a dotted path, or a name that nobody registered (e.g. a
    class name that the parser resolves itself), is left as it is.

    Args:
        document: A loaded config (dicts, lists and scalars).

    Returns:
        The same structure, with registered names resolved.

    Raises:
        EncoderPluginError: If a named encoder cannot be loaded (naming its entry point).
    """
    if isinstance(document, list):
        return [resolve_names(item) for item in document]
    if not isinstance(document, dict):
        return document
    resolved = {key: resolve_names(value) for key, value in document.items()}
    name = resolved.get("class_path")
    if isinstance(name, str) and "." not in name:
        registered = available().get(name)
        if registered is not None:
            registered.load()  # a broken plugin fails here, naming its entry point
            resolved["class_path"] = registered.class_path
    return resolved
