"""Every pipeline file shipped in pipelines/ is valid: wiring, and each stage's full config."""

from pathlib import Path

import pytest

from compress.config import resolve
from compress.errors import UserError
from compress.stages.pipeline import load_pipeline

FILES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml"))


def test_there_are_pipelines():
    assert len(FILES) >= 3


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pipeline_file_resolves(path):
    spec = load_pipeline(path)
    assert spec.name == path.stem
    for stage in spec.stages:
        cfg = resolve(spec.config, stage.set)
        assert cfg.data["name"] == spec.config["data"]["name"]


@pytest.mark.parametrize("bad, words", [
    ({"name": "x", "stages": [{"id": "a", "stage": "prune"}]}, "needs `from"),
    ({"name": "x", "stages": [{"id": "a", "stage": "pretrain"}, {"id": "a", "stage": "pretrain"}]},
     "used twice"),
    ({"name": "x", "stages": [{"id": "a", "stage": "fly"}]}, "stages.0.stage"),
    ({"name": "x", "stages": []}, "stages"),
    ({"name": "x", "stages": [{"id": "a", "stage": "pretrain"}], "extra": 1}, "extra"),
])
def test_bad_pipeline_specs(tmp_path, bad, words):
    import yaml
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError) as e:
        load_pipeline(f)
    assert words in str(e.value) and "\n" not in str(e.value)


SWEEPS = sorted((Path(__file__).parents[1] / "pipelines" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_resolves_every_cell(path):
    from compress.sweep import load_sweep
    from compress.sweep.driver import check_cells
    spec = load_sweep(path)
    assert spec.name == path.stem
    assert len(check_cells(spec, [], None)) > 1
