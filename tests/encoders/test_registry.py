"""The encoder registry: built-in encoders, entry points injected as installed packages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_cli import CONFIG, exit_code

from jepa_lightning.encoders import TextEncoder, VisionEncoder
from jepa_lightning.encoders.registry import (
    ENTRY_POINT_GROUP,
    EncoderPluginError,
    available,
    load_encoder_class,
    load_plugins,
    resolve_names,
)

# The CLI loads every plugin once per process: the fixture's broken ones warn then.
pytestmark = pytest.mark.filterwarnings("ignore:entry point .* cannot be loaded:UserWarning")

PLUGIN_MODULE = """
import torch
from jepa_lightning.encoders import EncoderOutput, ModalityEncoder


class Injected(ModalityEncoder):
    def __init__(self, width: int = 8, frozen: bool = True) -> None:
        super().__init__(frozen=frozen)
        self.proj = torch.nn.Linear(4, width)

    @property
    def output_dim(self) -> int:
        return self.proj.out_features

    def codec(self):
        raise NotImplementedError

    def encode(self, inputs):
        tokens = self.proj(inputs)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))


def not_an_encoder():
    return None
"""


def install(root: Path, distribution: str, entries: dict[str, str]) -> None:
    """Writes a distribution's metadata with ``entries`` in the encoders group under ``root``."""
    info = root / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package 'injected-plugin' with a good, and several broken, entry points."""
    (tmp_path / "injected_encoder_mod.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (tmp_path / "failing_encoder_mod.py").write_text("import no_such_dependency_xyz\n")
    install(
        tmp_path,
        "injected-plugin",
        {
            "injected": "injected_encoder_mod:Injected",
            "missing_module": "no_such_module_xyz:Encoder",
            "missing_class": "injected_encoder_mod:NoSuchClass",
            "failing_import": "failing_encoder_mod:Encoder",
            "not_encoder": "injected_encoder_mod:not_an_encoder",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_built_in_encoders_are_listed_and_load() -> None:
    registered = available()
    assert registered["vision"].distribution is None and registered["text"].distribution is None
    assert load_encoder_class("vision") is VisionEncoder
    assert load_encoder_class("text") is TextEncoder
    assert registered["vision"].class_path == "jepa_lightning.encoders.vision.VisionEncoder"


def test_injected_entry_point_resolves_by_name(plugins: Path) -> None:
    entry = available()["injected"]
    assert entry.distribution == "injected-plugin"
    encoder_class = load_encoder_class("injected")
    assert encoder_class.__name__ == "Injected" and encoder_class(width=6).output_dim == 6
    config = {
        "model": {"init_args": {"x_encoder": {"class_path": "injected", "init_args": {}}}},
        "trainer": {"callbacks": [{"class_path": "injected"}, {"class_path": "a.b.C"}]},
    }
    resolved = resolve_names(config)
    assert resolved["model"]["init_args"]["x_encoder"] == {
        "class_path": "injected_encoder_mod.Injected",
        "init_args": {},
    }
    assert resolved["trainer"]["callbacks"][0]["class_path"] == "injected_encoder_mod.Injected"
    assert resolved["trainer"]["callbacks"][1]["class_path"] == "a.b.C"  # dotted: as is
    assert config["model"]["init_args"]["x_encoder"]["class_path"] == "injected"  # not mutated


def test_unregistered_names_are_left_to_the_parser() -> None:
    assert resolve_names({"class_path": "VisionEncoder"}) == {"class_path": "VisionEncoder"}
    assert resolve_names(["text", {"x": 1}]) == ["text", {"x": 1}]  # only class_path values


def test_cli_config_names_an_injected_encoder(plugins: Path, capsys) -> None:
    x_encoder = '--model.init_args.x_encoder={"class_path": "injected", "init_args": {"width": 12}}'
    assert exit_code(["fit", "--config", CONFIG, x_encoder, "--print_config"]) in (0, None)
    out = capsys.readouterr().out
    assert "class_path: injected_encoder_mod.Injected" in out and "width: 12" in out


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing_module", "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ("missing_class", "AttributeError"),
        ("failing_import", "No module named 'no_such_dependency_xyz'"),
        ("not_encoder", "is not a jepa_lightning.encoders.ModalityEncoder subclass"),
    ],
)
def test_broken_entry_point_names_itself(plugins: Path, name: str, reason: str) -> None:
    with pytest.raises(EncoderPluginError) as error:
        load_encoder_class(name)
    message = str(error.value)
    assert f"entry point {name!r}" in message and "package 'injected-plugin'" in message
    assert reason in message


def test_cli_fails_in_one_line_naming_the_broken_entry_point(
    plugins: Path, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "broken.yaml"
    text = Path(CONFIG).read_text()
    config.write_text(text.replace("jepa_lightning.encoders.VisionEncoder", "missing_module"))
    assert exit_code(["fit", "--config", str(config), "--print_config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jepa-lightning: error: entry point 'missing_module'")
    assert "No module named 'no_such_module_xyz'" in err and "Traceback" not in err


def test_load_plugins_warns_about_broken_ones_and_loads_the_rest(plugins: Path) -> None:
    with pytest.warns(UserWarning) as warned:
        loaded = load_plugins()
    assert "Injected" in [cls.__name__ for cls in loaded]
    messages = " ".join(str(w.message) for w in warned)
    for name in ("missing_module", "missing_class", "failing_import", "not_encoder"):
        assert f"entry point {name!r}" in messages


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(EncoderPluginError, match="no encoder is registered as 'nope'.*vision"):
        load_encoder_class("nope")


def test_two_packages_claiming_one_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path / "one", "plugin-one", {"dup": "one_mod:Encoder"})
    install(tmp_path / "two", "plugin-two", {"dup": "two_mod:Encoder"})
    monkeypatch.syspath_prepend(str(tmp_path / "one"))
    monkeypatch.syspath_prepend(str(tmp_path / "two"))
    with pytest.raises(EncoderPluginError, match="two encoders are registered as 'dup'") as error:
        available()
    assert "plugin-one" in str(error.value) and "plugin-two" in str(error.value)


def test_a_plugin_cannot_take_a_built_in_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, "squatter", {"vision": "squatter_mod:Encoder"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EncoderPluginError, match="built-in encoder 'vision'"):
        available()
