"""Project templates on the hub: the image's, admins' folders and git repositories, choices.

Real folders and real git repositories (file:// URLs, no network); the clock
is passed in, so a refresh is a matter of moving it.
"""

import json
import logging
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from traitlets.config import Config

from jupyter_gpu_meter.choice import ChoiceError, resolve_choice
from jupyter_gpu_meter.clock import utcnow
from jupyter_gpu_meter.container import ContainerRefused
from jupyter_gpu_meter.project_templates import (
    EXTRA_FOLDER,
    IMAGE_FOLDER,
    SHIPPED,
    Template,
    TemplateError,
    merge,
    parse_manifest,
    read_folder,
    template_mounts,
)
from jupyter_gpu_meter.spawn_form import options_from_form, render_spawn_form
from jupyter_gpu_meter.spawner_templates import (
    Templates,
    TemplatesMixin,
    clone_path,
    split_repository,
    sync_repository,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_FOLDER = ROOT / "docker" / "templates"


def write_template(folder: Path, slug: str, name: str, **files) -> Path:
    (folder / slug).mkdir(parents=True, exist_ok=True)
    (folder / slug / "template.json").write_text(json.dumps({"name": name}))
    for filename, text in files.items():
        (folder / slug / filename).write_text(text)
    return folder / slug


def git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repository(tmp_path):
    """A git repository with one template, and its file:// URL."""
    repo = tmp_path / "repo"
    write_template(repo, "from-git", "From git", **{"README.md": "v1\n"})
    git("init", "--quiet", "--initial-branch=main", str(repo))
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "v1", cwd=repo)
    return repo, f"file://{repo}"


def commit(repo: Path, message: str):
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", message, cwd=repo)


# --- the image's templates ----------------------------------------------------------


def test_the_shipped_list_is_what_docker_templates_holds():
    folders = read_folder(SHIPPED_FOLDER)
    assert {t.slug: (t.name, t.description) for t in folders} == {
        t.slug: (t.name, t.description) for t in SHIPPED.values()
    }
    for template in folders:
        files = {path.name for path in Path(template.source).iterdir()}
        assert "README.md" in files and any(name.endswith(".ipynb") for name in files), files
    assert SHIPPED["ddp-on-n-gpus"].folder == f"{IMAGE_FOLDER}/ddp-on-n-gpus"
    assert (SHIPPED_FOLDER / "ddp-on-n-gpus" / "train_ddp.py").is_file()


# --- template.json and folders --------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not JSON"),
        ("[]", "must be an object"),
        ('{"name": "x", "packages": []}', "unknown key(s) packages; allowed: name, description"),
        ('{"description": "x"}', "'name' is required"),
        ('{"name": "  "}', "'name' is required"),
        ('{"name": "x", "description": 3}', "'description' must be text, got 3"),
    ],
)
def test_a_broken_manifest_says_what_is_wrong(text, message):
    with pytest.raises(TemplateError, match=r"^here: .*") as raised:
        parse_manifest(text, "slug", "here")
    assert message in str(raised.value)


@pytest.mark.parametrize("slug", ["Upper", "under_score", "-dash", "x" * 64, "a.b"])
def test_a_folder_name_must_be_a_slug(slug):
    with pytest.raises(TemplateError, match="is not a template slug: it becomes the folder"):
        parse_manifest('{"name": "x"}', slug, "here")


def test_a_folder_of_templates_skips_what_is_no_template(tmp_path):
    write_template(tmp_path, "b-one", "B")
    write_template(tmp_path, "a-one", "A")
    (tmp_path / ".git" / "x").mkdir(parents=True)
    (tmp_path / ".git" / "x" / "template.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "file.txt").write_text("")
    found = read_folder(tmp_path)
    assert [(t.slug, t.name, t.source) for t in found] == [
        ("a-one", "A", str(tmp_path / "a-one")),
        ("b-one", "B", str(tmp_path / "b-one")),
    ]
    assert found[0].folder == f"{EXTRA_FOLDER}/a-one"
    with pytest.raises(TemplateError, match=r"no such folder \(it must hold one folder per"):
        read_folder(tmp_path / "missing")
    (tmp_path / "c-bad").mkdir()
    (tmp_path / "c-bad" / "template.json").write_bytes(b"\xff\xfe")
    with pytest.raises(TemplateError, match="cannot be read"):
        read_folder(tmp_path)


def test_a_slug_defined_twice_is_refused_and_mounts_are_read_only_binds(tmp_path):
    mine = read_folder(write_template(tmp_path / "a", "mine", "Mine").parent)
    assert list(merge(["lora-fine-tune"], [mine])) == ["lora-fine-tune", "mine"]
    clash = [Template("ddp-on-n-gpus", "Mine", source="/srv/t/ddp-on-n-gpus")]
    with pytest.raises(TemplateError, match="'ddp-on-n-gpus' is defined twice, in /srv/t/ddp"):
        merge(list(SHIPPED), [clash])
    assert template_mounts([*SHIPPED.values(), *mine]) == [
        {
            "Type": "bind",
            "Source": str(tmp_path / "a" / "mine"),
            "Target": f"{EXTRA_FOLDER}/mine",
            "ReadOnly": True,
        }
    ]


# --- the settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("shipped", ["sdxl"], "unknown template(s) 'sdxl'; the image has: ddp-on-n-gpus"),
        ("directories", ["templates"], "is not an absolute path"),
        ("directories", ["/proc/x"], "is a system or Docker folder"),
        ("directories", ["/var/lib/docker/t"], "is a system or Docker folder"),
        ("git_repositories", ["#main"], "is not a repository"),
        ("git_repositories", ["https://x/y z.git"], "is not a repository"),
        ("git_repositories", ["--upload-pack=evil"], "is not a repository"),
    ],
)
def test_settings_say_what_is_allowed(name, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Templates(config=Config({"Templates": {name: value}}))


def test_by_default_the_image_s_templates_are_offered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    templates = Templates()
    assert templates.git_cache_dir == str(tmp_path / "jupyter-gpu-meter-templates")
    assert list(templates.available()) == list(SHIPPED)
    assert Templates(shipped=[]).available() == {}


def test_folders_and_repositories_are_offered_and_a_failing_source_is_left_out(
    tmp_path, repository, caplog
):
    repo, url = repository
    folder = tmp_path / "admin"
    write_template(folder, "mine", "Mine")
    write_template(tmp_path / "clash", "mine", "Mine again")
    templates = Templates(
        shipped=["ddp-on-n-gpus"],
        directories=[str(folder), str(tmp_path / "missing"), str(tmp_path / "clash")],
        git_repositories=[url, f"file://{tmp_path}/no-such-repo"],
        git_cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level(logging.ERROR):
        found = templates.available()
    assert list(found) == ["ddp-on-n-gpus", "mine", "from-git"]
    assert found["from-git"].source == str(clone_path(tmp_path / "cache", url) / "from-git")
    assert Path(found["from-git"].source, "README.md").read_text() == "v1\n"
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 3
    assert errors[0].startswith(f"Templates from {tmp_path}/missing left out: ")
    assert "'mine' is defined twice" in errors[1]
    assert errors[2].startswith(f"Templates from file://{tmp_path}/no-such-repo left out: ")
    assert "git clone failed: " in errors[2]


def test_a_repository_is_fetched_again_once_its_clone_is_old(tmp_path, repository, caplog):
    repo, url = repository
    templates = Templates(
        git_repositories=[url], git_cache_dir=str(tmp_path / "cache"), git_refresh_seconds=60
    )
    now = utcnow()
    source = Path(templates.available(now)["from-git"].source)
    (repo / "from-git" / "README.md").write_text("v2\n")
    write_template(repo, "second", "Second")
    commit(repo, "v2")
    # within the refresh period: the clone as it was
    assert "second" not in templates.available(now + timedelta(seconds=59))
    assert (source / "README.md").read_text() == "v1\n"
    # after it: fetched, updated in place (running servers' binds see it)
    found = templates.available(now + timedelta(seconds=61))
    assert "second" in found and (source / "README.md").read_text() == "v2\n"
    # the repository gone: the last clone is used, and the failure logged
    repo.rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING):
        found = templates.available(now + timedelta(seconds=200))
    assert "second" in found
    assert f"Template repository {url}: git fetch failed: " in caplog.text
    assert "using the last clone" in caplog.text


def test_a_branch_is_cloned_when_the_entry_names_one(tmp_path, repository):
    repo, url = repository
    git("checkout", "--quiet", "-b", "other", cwd=repo)
    write_template(repo, "on-other", "On other")
    commit(repo, "other")
    git("checkout", "--quiet", "main", cwd=repo)
    assert split_repository(f"{url}#other") == (url, "other")
    path = sync_repository(f"{url}#other", tmp_path / "cache")
    assert (path / "on-other" / "template.json").is_file()
    assert not (sync_repository(url, tmp_path / "cache") / "on-other").exists()


# --- the user's choice and the form -------------------------------------------------------


def choose(options):
    return resolve_choice(options, profiles=[], models={}, templates=["ddp-on-n-gpus", "mine"])


def test_the_template_option_names_one_of_those_offered():
    assert choose({"template": "mine"}).template == "mine"
    assert choose({"gpus": 0}).template == ""
    assert choose({"template": ""}).template == ""
    assert choose({"template": None}).template == ""
    for wrong in ("sdxl", 3, ["mine"]):
        with pytest.raises(ChoiceError) as raised:
            choose({"template": wrong})
        assert str(raised.value).endswith("; available: ddp-on-n-gpus, mine")
    with pytest.raises(ChoiceError, match="unknown template 'x'; available: none"):
        resolve_choice({"template": "x"}, profiles=[], models={})


def test_the_form_offers_the_templates_and_posts_the_choice():
    templates = [SHIPPED["ddp-on-n-gpus"], Template("mine", "Mine <b>", "Ours", "/srv/t/mine")]
    page = render_spawn_form(
        profiles=[], models={}, prices={"cpu": "1 USD/h", "models": {}}, templates=templates,
        user_options={"template": "mine"},
    )  # fmt: skip
    assert '<select class="form-select" id="template" name="template">' in page
    assert '<option value="">none</option>' in page
    assert '<option value="mine" title="Ours" selected>Mine &lt;b&gt; (~/mine)</option>' in page
    assert "template" not in render_spawn_form(
        profiles=[], models={}, prices={"cpu": "", "models": {}}
    )
    assert options_from_form({"gpus": ["0"], "template": [" mine "]}) == {
        "gpus": "0",
        "template": "mine",
    }
    assert options_from_form({"gpus": ["0"], "template": [""]}) == {"gpus": "0"}


def test_admin_templates_are_mounted_unless_something_is_in_their_place():
    mixin = TemplatesMixin()
    mine = Template("mine", "Mine", source="/srv/t/mine")
    host = mixin._with_templates({"Binds": ["/data:/data:ro"]}, [SHIPPED["lora-fine-tune"], mine])
    assert host["Mounts"] == template_mounts([mine]) and host["Binds"] == ["/data:/data:ro"]
    assert mixin._with_templates(None, SHIPPED.values()) == {}
    for taken in ("/x:/opt/jupyter-gpu-meter", f"/x:{EXTRA_FOLDER}/mine:ro"):
        with pytest.raises(ContainerRefused, match="where the admin's templates go"):
            mixin._with_templates({"Binds": [taken]}, [mine])


def test_git_missing_or_hanging_is_a_template_error(tmp_path, monkeypatch):
    from jupyter_gpu_meter import spawner_templates

    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(TemplateError, match="^the git command is not installed on the hub's host$"):
        sync_repository("file:///nowhere", tmp_path / "cache")
    # a git that never answers (a server that hangs): stopped after GIT_TIMEOUT
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "git").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    (tmp_path / "bin" / "git").chmod(0o755)
    monkeypatch.setattr(spawner_templates, "GIT_TIMEOUT", 0.5)
    with pytest.raises(TemplateError, match="^git clone took longer than 0.5 s$"):
        sync_repository("file:///nowhere", tmp_path / "cache")


def test_check_config_stops_a_hub_whose_template_settings_cannot_work():
    from jupyter_gpu_meter.hubconfig import check_config

    c = Config()
    c.Templates.directories = ["relative/templates"]
    with pytest.raises(ValueError, match="c.Templates.directories: 'relative/templates' is not"):
        check_config(c)
    c.Templates.directories = ["/srv/templates"]
    check_config(c)
