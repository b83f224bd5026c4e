from importlib import resources
from pathlib import Path

import pytest

from metalsm.config import load_config
from metalsm.datasets import EXAMPLES_DIR, data_root
from metalsm.errors import MetalsmInputError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "area.toml"
    path.write_text(text)
    return path


MINIMAL = 'name = "x"\ndem = "dem.tif"\n[inventory]\npath = "slides.shp"\n'


def test_example_config_resolves_into_the_shared_data():
    config = load_config(EXAMPLES_DIR / "kaghan.toml")
    assert Path(config.dem) == data_root() / "kaghan" / "AW3D30.tif"
    assert [r.kind for r in config.rasters] == ["categorical", "categorical"]
    assert config.vectors[0].name == "distance_to_faults"
    assert config.zones.levels == len(config.zones.labels) == 4


def test_template_is_a_valid_config():
    template = resources.files("metalsm") / "templates" / "study_area.toml"
    with resources.as_file(template) as path:
        config = load_config(path)
    assert config.sampling.ratio == 1.0
    assert config.model.map_model in config.model.names


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.dem == str(tmp_path / "dem.tif")
    assert config.inventory.path == str(tmp_path / "slides.shp")
    assert config.sampling.method == "random" and config.validation.n_folds == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "rule_typo = 1\n", "unknown key(s) rule_typo"),
        (MINIMAL.replace('dem = "dem.tif"\n', ""), "missing required key(s) 'dem'"),
        ('name = "x"\ndem = "d.tif"\n', "missing required key(s) 'inventory'"),
        ('dem = "d.tif"\n[inventory]\npath = "s.shp"\n', "missing required key 'name'"),
        (MINIMAL + '[table]\npath = "t.csv"\n', "either a raster study area"),
        (MINIMAL + "[blocks]\nn_blocks = 0\n", "blocks.n_blocks must be >= 1, got 0"),
        (MINIMAL + "[blocks]\ncompactness = -1\n", "blocks.compactness must be > 0"),
        (MINIMAL + "[blocks]\nfactor_weights = { slope = 2 }\n", "weighting = \"given\""),
        (MINIMAL + "[blocks]\nweighting = \"given\"\nfactor_weights = { slope = \"x\" }\n",
         "'blocks.factor_weights.slope': expected a number"),
        (MINIMAL + 'rule = "everywhere"\n', "'inventory.rule': 'everywhere' is not one of"),
        (MINIMAL + "[sampling]\nratio = \"one\"\n", "'sampling.ratio': expected a number"),
        (MINIMAL + "[sampling]\nbuffer = 3\n", "[sampling]: unknown key(s) buffer"),
        (MINIMAL + '[model]\nnames = ["lr"]\nmap_model = "rf"\n', "map_model 'rf'"),
        (
            MINIMAL + '[[rasters]]\nname = "geo"\npath = "g.tif"\nkind = "classes"\n',
            "'rasters[0].kind'",
        ),
        (MINIMAL + "[zones]\nlevels = 3\nlabels = [\"a\"]\n", "zones.labels has 1"),
        (MINIMAL + "[validation]\nrepeats = 0\n",
         "validation.repeats must be >= 1 (cross-validation runs at least once), got 0"),
        (MINIMAL + "[validation]\nrepeats = 2.5\n", "'validation.repeats': expected an integer"),
        (MINIMAL + "[validation]\nbuffer_m = -50\n",
         "validation.buffer_m must be >= 0 (metres of training samples left out"),
        (MINIMAL + "[validation]\nn_folds = 1\n", "validation.n_folds must be >= 2"),
        (MINIMAL + "[uncertainty]\nrefits = 1\n", "uncertainty.refits must be >= 2"),
        (MINIMAL + '[model]\nmap_model = "meta-blockwise"\n[uncertainty]\n',
         "[uncertainty] refits the map model, which 'meta-blockwise' is not"),
        ('name = "x"\n[table]\npath = "t.csv"\n[uncertainty]\n',
         "a [table] study area has no map; remove [uncertainty]"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(MetalsmInputError) as error:
        load_config(_write(tmp_path, text))
    assert message in str(error.value)
    assert "area.toml" in str(error.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(MetalsmInputError, match="config file not found: .*nowhere.toml"):
        load_config(tmp_path / "nowhere.toml")


def test_data_root_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("METALSM_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    monkeypatch.setenv("METALSM_DATA", str(tmp_path / "absent"))
    with pytest.raises(MetalsmInputError, match="absent"):
        data_root()


def test_blocks_and_table_sections(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL + "[blocks]\nn_blocks = 32\n"
                                "weighting = \"given\"\nfactor_weights = { slope = 2 }\n"))
    assert config.blocks.n_blocks == 32 and config.blocks.factor_weights == {"slope": 2.0}
    assert load_config(_write(tmp_path, MINIMAL)).blocks is None
    table = load_config(_write(tmp_path, 'name = "hk"\n[table]\npath = "t.csv"\n'
                               'categorical = ["lithology"]\n'))
    assert table.dem is None and table.table.path == str(tmp_path / "t.csv")
    assert table.table.categorical == ("lithology",)


def test_meta_settings_out_of_range_are_all_named(tmp_path):
    text = (EXAMPLES_DIR / "hongkong-meta.toml").read_text()
    text = (text.replace("inner_steps = 5", "inner_steps = 0")
            .replace('inner_lr_mode = "per-element"', 'inner_lr_mode = "per-element"\n'
                     "guard_steps = [5, 0]\ntune_budget_s = -1")
            .replace("meta_lr = 1e-3", "meta_lr = 0"))
    path = tmp_path / "hk.toml"
    path.write_text(text)
    with pytest.raises(MetalsmInputError) as err:
        load_config(path)
    for key in ("meta.inner_steps", "meta.guard_steps[1]", "meta.meta_lr", "meta.tune_budget_s"):
        assert key in str(err.value), key
    bad_mode = tmp_path / "mode.toml"
    bad_mode.write_text(text.replace('"per-element"', '"adam"'))
    with pytest.raises(MetalsmInputError, match="inner_lr_mode"):
        load_config(bad_mode)


def test_extends_merges_tables_and_keeps_the_bases_paths(tmp_path):
    """A config in another folder extends a base that extends a third: tables merge key
    by key (the extending file wins), arrays are replaced whole, and each file's
    relative paths resolve against its own folder."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "area").mkdir()
    (tmp_path / "shared" / "root.toml").write_text(
        MINIMAL + '[[rasters]]\nname = "geo"\npath = "geo.tif"\nkind = "categorical"\n'
        '[validation]\nn_folds = 4\nseed = 9\n[model]\nnames = ["lr", "rf"]\nmap_model = "rf"\n')
    (tmp_path / "shared" / "base.toml").write_text(
        'extends = "root.toml"\n[validation]\nrepeats = 3\n')
    child = tmp_path / "area" / "mine.toml"
    child.write_text('extends = "../shared/base.toml"\nname = "mine"\n[validation]\nseed = 1\n'
                     '[model]\nnames = ["fr"]\nmap_model = "fr"\n'
                     '[inventory]\npath = "my_slides.gpkg"\n')
    config = load_config(child)
    assert config.name == "mine"
    assert config.dem == str(tmp_path / "shared" / "dem.tif")  # the root's own folder
    assert config.rasters[0].path == str(tmp_path / "shared" / "geo.tif")
    assert config.inventory.path == str(tmp_path / "area" / "my_slides.gpkg")
    assert (config.validation.n_folds, config.validation.repeats, config.validation.seed) == (
        4, 3, 1)
    assert config.model.names == ("fr",)  # arrays replaced, not appended
    assert config.source == str(child.resolve())


def test_extends_errors_name_the_files(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n' + MINIMAL)
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(MetalsmInputError, match="extend each other in a cycle") as err:
        load_config(tmp_path / "a.toml")
    assert str(err.value).count("a.toml") == 2 and "b.toml" in str(err.value)
    (tmp_path / "c.toml").write_text('extends = "nowhere.toml"\n' + MINIMAL)
    with pytest.raises(MetalsmInputError, match=r"c.toml: extends = 'nowhere.toml', but .*"
                                                r"nowhere.toml is not a file"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "base.toml").write_text(MINIMAL + "[validation]\nn_folds = 1\n")
    (tmp_path / "d.toml").write_text('extends = "base.toml"\n[zones]\nlevels = 5\n')
    with pytest.raises(MetalsmInputError) as err:
        load_config(tmp_path / "d.toml")
    assert "validation.n_folds must be >= 2" in str(err.value)
    assert f"validation.n_folds is set in {tmp_path / 'base.toml'}" in str(err.value)
    (tmp_path / "e.toml").write_text("extends = 3\n" + MINIMAL)
    with pytest.raises(MetalsmInputError, match="'extends' must be the path of another config"):
        load_config(tmp_path / "e.toml")


def test_examples_that_extend_others_load_as_their_bases_plus_their_own_tables():
    meta = load_config(EXAMPLES_DIR / "kaghan-meta.toml")
    plain = load_config(EXAMPLES_DIR / "kaghan.toml")
    assert "extends" in (EXAMPLES_DIR / "kaghan-meta.toml").read_text()
    assert meta.dem == plain.dem and meta.rasters == plain.rasters
    assert meta.sampling == plain.sampling and meta.zones == plain.zones
    assert meta.model.map_model == "meta-blockwise" and plain.meta is None
    for name in ("kaghan-experiments.toml", "kaghan-split.toml"):
        assert load_config(EXAMPLES_DIR / name).meta == meta.meta
    credibility = load_config(EXAMPLES_DIR / "kaghan-credibility.toml")
    assert credibility.sampling.method == "credibility"
    assert credibility.sampling.buffer_m == plain.sampling.buffer_m  # merged from the base
