from pathlib import Path

from service.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_example_configuration_loads():
    cfg = load_config(REPO / "deploy" / "spinegate.yaml", environ={})
    assert cfg.export.destinations[0].ae_title == "PACS"
    assert [r.name for r in cfg.routing] == ["sag_t1", "sag_t2"]
