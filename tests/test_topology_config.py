"""The [ui] table: topology counting on by default, its window and cap validated, errors naming the key."""
import pytest

from harness import ServerProcess
from meshdns.config import ConfigError, parse_config


def test_defaults_and_values():
    ui = parse_config({}).ui
    assert (ui.topology, ui.topology_window, ui.topology_max_keys) == (True, 900.0, 10_000)
    ui = parse_config({"ui": {"topology": False, "topology_window": "1h", "topology_max_keys": 50}}).ui
    assert (ui.topology, ui.topology_window, ui.topology_max_keys) == (False, 3600.0, 50)


@pytest.mark.parametrize("table, message", [
    ({"topology": "yes"}, "ui.topology: expected bool"),
    ({"topology_window": "90s"}, "ui.topology_window: a whole number of minutes from 1m to 60m"),
    ({"topology_window": "2h"}, "ui.topology_window: a whole number of minutes from 1m to 60m"),
    ({"topology_window": "0s"}, "ui.topology_window: a whole number of minutes from 1m to 60m"),
    ({"topology_window": "soon"}, "ui.topology_window: cannot parse duration"),
    ({"topology_max_keys": 0}, "ui.topology_max_keys: must be at least 1"),
    ({"topology_max_keys": True}, "ui.topology_max_keys: expected int"),
    ({"topolgy": True}, "unknown key 'ui.topolgy'"),
])
def test_bad_values_are_refused_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"ui": table})


def test_serve_refuses_a_bad_ui_table_naming_file_and_key(tmp_path):
    config = tmp_path / "meshdns.toml"
    config.write_text('[ui]\ntopology_window = "90s"\n')
    with pytest.raises(RuntimeError, match=r"meshdns\.toml: ui\.topology_window"):
        ServerProcess("--config", str(config), "--data-dir", str(tmp_path / "data")).start()
