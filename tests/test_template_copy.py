"""The copy of a project template into the home, as the JupyterLab extension does it.

jupyterlab_gpu_meter.template_copy runs inside the notebook container; here it
runs on real temporary folders: copies once, never overwrites, keeps what the
user changed or deleted.
"""

import json
import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docker" / "labextension"))

from jupyterlab_gpu_meter.template_copy import (  # noqa: E402
    RECORD,
    TemplateNotFound,
    copy_at_start,
    copy_template,
    find_template,
    list_templates,
)
from jupyterlab_gpu_meter.templates import copy_chosen, copy_now  # noqa: E402


@pytest.fixture
def roots(tmp_path):
    image, extra = tmp_path / "image", tmp_path / "extra"
    demo = image / "demo"
    (demo / "src").mkdir(parents=True)
    (demo / "template.json").write_text('{"name": "Demo", "description": "A demo"}')
    (demo / "README.md").write_text("# Demo\n")
    (demo / "train.ipynb").write_text("{}")
    (demo / "src" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (demo / "src" / "run.sh").chmod(0o555)
    (demo / "secret-link").symlink_to("/etc/passwd")
    mine = extra / "mine"
    mine.mkdir(parents=True)
    (mine / "template.json").write_text('{"name": "Mine"}')
    (mine / "notes.txt").write_text("notes\n")
    # the image's demo wins over an extra one of the same slug; broken ones are not offered
    (extra / "demo").mkdir()
    (extra / "demo" / "template.json").write_text('{"name": "Other demo"}')
    (extra / "broken").mkdir()
    (extra / "broken" / "template.json").write_text("{not json")
    (extra / "Bad_Slug").mkdir()
    (extra / "Bad_Slug" / "template.json").write_text('{"name": "Bad"}')
    (extra / "no-manifest").mkdir()
    return (str(image), str(extra), str(tmp_path / "missing"))


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_templates_are_listed_from_every_root_the_first_one_winning(roots):
    assert list_templates(roots) == [
        {"slug": "demo", "name": "Demo", "description": "A demo"},
        {"slug": "mine", "name": "Mine", "description": ""},
    ]
    assert find_template("mine", roots) == Path(roots[1]) / "mine"


@pytest.mark.parametrize("slug", ["nope", "../image/demo", "broken-", "", "Bad_Slug"])
def test_an_unknown_template_is_refused_with_the_slugs_there_are(roots, slug):
    with pytest.raises(TemplateNotFound, match=r"; there are: demo, mine$"):
        find_template(slug, roots)


def test_a_copy_brings_every_file_but_the_manifest_and_links(roots, home):
    result = copy_template(find_template("demo", roots), home, "demo")
    assert sorted(result.copied) == ["demo/README.md", "demo/src/run.sh", "demo/train.ipynb"]
    assert result.kept == [] and result.readme == "demo/README.md"
    assert not (home / "demo" / "template.json").exists()
    assert not (home / "demo" / "secret-link").exists()
    run = home / "demo" / "src" / "run.sh"
    assert run.read_text() == "#!/bin/sh\necho hi\n"
    # the user's own copy: writable, executable where the original is
    assert oct(run.stat().st_mode & 0o777) == "0o755"
    assert oct((home / "demo" / "README.md").stat().st_mode & 0o777) == "0o644"


def test_a_copy_never_overwrites_and_a_second_copies_nothing(roots, home):
    (home / "demo").mkdir()
    (home / "demo" / "README.md").write_text("my notes\n")
    first = copy_template(find_template("demo", roots), home, "demo")
    assert first.kept == ["demo/README.md"]
    assert (home / "demo" / "README.md").read_text() == "my notes\n"
    second = copy_template(find_template("demo", roots), home, "demo")
    assert second.copied == []
    assert sorted(second.kept) == ["demo/README.md", "demo/src/run.sh", "demo/train.ipynb"]


def test_a_file_in_the_way_of_a_folder_is_left_alone(roots, home):
    (home / "demo").mkdir()
    (home / "demo" / "src").write_text("a file where the template has a folder\n")
    with pytest.raises(OSError):
        copy_template(find_template("demo", roots), home, "demo")
    assert (home / "demo" / "src").read_text() == "a file where the template has a folder\n"


def test_the_copy_at_start_happens_once_even_after_the_user_deletes_files(roots, home):
    first = copy_at_start("demo", home, roots)
    assert len(first.copied) == 3
    (home / "demo" / "train.ipynb").unlink()
    assert copy_at_start("demo", home, roots) is None
    assert not (home / "demo" / "train.ipynb").exists()
    assert json.loads((home / RECORD).read_text()) == {"copied": ["demo"]}
    # another template is copied at its first start, and both are recorded
    assert copy_at_start("mine", home, roots).copied == ["mine/notes.txt"]
    assert json.loads((home / RECORD).read_text()) == {"copied": ["demo", "mine"]}


def test_a_broken_record_is_read_as_nothing_copied(roots, home):
    (home / RECORD).parent.mkdir(parents=True)
    (home / RECORD).write_text("[1, 2")
    assert copy_at_start("demo", home, roots) is not None
    (home / RECORD).write_text("[]")
    assert copy_at_start("demo", home, roots) is not None
    assert copy_at_start("demo", home, roots) is None


def test_the_copy_at_server_start_logs_and_never_fails(roots, home, monkeypatch, caplog):
    log = logging.getLogger("test-template-copy")
    monkeypatch.delenv("JUPYTER_GPU_METER_TEMPLATE", raising=False)
    with caplog.at_level(logging.INFO, logger=log.name):
        copy_chosen(log, roots, home)  # no template chosen: nothing
        monkeypatch.setenv("JUPYTER_GPU_METER_TEMPLATE", "nope")
        copy_chosen(log, roots, home)
        monkeypatch.setenv("JUPYTER_GPU_METER_TEMPLATE", "demo")
        copy_chosen(log, roots, home)
        copy_chosen(log, roots, home)
    assert [r.getMessage() for r in caplog.records] == [
        "Template nope not copied into the home: no template 'nope'; there are: demo, mine",
        "Template demo copied into ~/demo: 3 file(s) new, 0 kept",
        "Template demo was copied at an earlier start; left as it is",
    ]


def test_the_post_answer_names_paths_from_the_servers_root(roots, home):
    answer = copy_now("demo", str(home), roots, home)
    assert answer["path"] == "demo" and answer["readme"] == "demo/README.md"
    assert len(answer["copied"]) == 3 and answer["kept"] == []
    # a server rooted elsewhere gets absolute paths
    elsewhere = copy_now("demo", str(home.parent / "image"), roots, home)
    assert elsewhere["path"] == str(home / "demo") and elsewhere["copied"] == []
    with pytest.raises(TemplateNotFound):
        copy_now("nope", str(home), roots, home)
