import pytest

from compress.config import merge, parse_set, resolve
from compress.errors import UserError


def test_defaults_resolve_to_the_cpna_demo():
    cfg = resolve()
    assert cfg.section("method")[0] == "cpna"
    assert cfg.data["name"] == "xor" and cfg.data["k"] == 3 and cfg.data["p"] == 60
    assert cfg.model["hidden"] == [1024]


def test_set_parses_yaml_values_and_nests():
    assert parse_set("train.lr=1e-4") == {"train": {"lr": 1e-4}}
    assert parse_set("model.hidden=[8, 4]") == {"model": {"hidden": [8, 4]}}
    cfg = resolve(parse_set("train.lr=0.01"), parse_set("model.hidden=[8,4]"))
    assert cfg.train.lr == 0.01 and cfg.model["hidden"] == [8, 4]


def test_layers_apply_in_order_and_seed_wins():
    cfg = resolve({"seed": 1, "train": {"lr": 0.1}}, {"train": {"lr": 0.2}}, seed=7)
    assert cfg.seed == 7 and cfg.train.lr == 0.2


def test_renaming_a_named_section_resets_its_options():
    merged = merge({"data": {"name": "xor", "k": 3}}, {"data": {"name": "digits"}})
    assert merged["data"] == {"name": "digits"}
    cfg = resolve({"data": {"name": "digits"}})
    assert "k" not in cfg.data and cfg.data["name"] == "digits"


@pytest.mark.parametrize("layer, words", [
    ({"train": {"lrr": 1}}, ["train.lrr", "unknown key"]),
    ({"data": {"kk": 1}}, ["data.kk", "unknown key"]),
    ({"method": {"name": "cpna", "output_density": 1.5}}, ["method.output_density"]),
    ({"data": {"k": 5, "p": 4}}, ["k=5", "p=4"]),
    ({"method": {"name": "nope"}}, ["unknown method 'nope'", "cpna"]),
    ({"train": {"duration": "ten epochs"}}, ["train.duration"]),
])
def test_bad_config_is_one_clear_line(layer, words):
    with pytest.raises(UserError) as e:
        resolve(layer)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_density_and_sparsity_are_explicit():
    cfg = resolve({"method": {"name": "magnitude", "sparsity": 0.7}})
    assert cfg.method["density"] == pytest.approx(0.3)
    with pytest.raises(UserError, match="disagree"):
        resolve({"method": {"name": "magnitude", "sparsity": 0.7, "density": 0.7}})
    for bad in (0, 1, 1.2):
        with pytest.raises(UserError, match="method.density"):
            resolve({"method": {"name": "magnitude", "density": bad}})


def test_digest_changes_with_config():
    assert resolve().digest() == resolve().digest()
    assert resolve().digest() != resolve(seed=1).digest()


def test_malformed_yaml(tmp_path):
    from compress.config import load_yaml
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_yaml(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_yaml(lst)


def test_method_defaults_may_set_method_options():
    from compress.registry import METHODS
    for entry in METHODS.entries():
        cfg = resolve({"method": {"name": entry.name}})
        for key, value in entry.defaults.get("method", {}).items():
            assert cfg.method[key] == value
    assert resolve({"method": {"name": "iterand", "k_per": 5}}).method["k_per"] == 5
