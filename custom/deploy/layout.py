"""The files of the deployable bundle besides the model: configs, licences, data lists, ``large_files.yml``.

The deployable bundle is laid out as a MONAI model-zoo bundle (``ci/verify_bundle.py`` checks it)::

    LICENSE                          the code's licence
    large_files.yml                  the model files over the model-zoo's 25 MB limit, with sha256
    configs/inference.json           set to the run: classes, input size, network
    configs/metadata.json            set to the run, with its test metrics when known
    configs/train.json               trains on a data list of the user's (``dataset_dir``, ``datalist``)
    configs/evaluate.json, multi_gpu_train.json, logging.conf
    configs/datasets/<name>.json     the real-data overlays (NIH, CheXpert), their data lists in data_lists/
    docs/README.md, docs/data_license.txt, ...  the pages, and the files they link (figures, the noise benchmark's page)

Every config runs with ``bundle_root`` set to the bundle folder, and ``"."`` is the default, so
``python -m monai.bundle run --config_file configs/inference.json`` works from inside the folder.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

from ..config import resolve_includes
from ..files import file_sha256, read_json, write_json
from ..networks import network_config

#: what the code is licensed under (the model-zoo requires the file) and the datasets' terms.
LICENSE_FILE, DATA_LICENSE_FILE = "LICENSE", "docs/data_license.txt"
#: configs copied with only their ``%`` includes written in.
PLAIN_CONFIGS = ("evaluate.json", "multi_gpu_train.json", "logging.conf")
#: the deployable train.json's data: ``<dataset_dir>/datalist.json`` until the user says otherwise.
DEPLOY_DATASET_DIR = "/workspace/data/chest_xray"
DEPLOY_DATALIST = "$@dataset_dir + '/datalist.json'"
#: folder of the data lists the dataset overlays name (repository root, or the bundle folder).
DATA_LISTS = "data_lists"
#: model-zoo's limit on one file; bigger ones are listed in large_files.yml.
LARGE_FILE_BYTES = 25 * 1000 * 1000
#: what the runtime must never name: the tools are not in the deployable bundle.
TOOLS_MODULE = "custom.tools"


def _read_config(config_dir: Path, name: str) -> dict:
    """A config of ``config_dir`` with its ``%`` includes written in (paths relative to the repository root)."""
    return resolve_includes(read_json(config_dir / name, "bundle config"), config_dir.parent.parent)


def _check_runtime_only(config: dict, where) -> None:
    if TOOLS_MODULE in json.dumps(config):
        raise ValueError(f"{where} names {TOOLS_MODULE}, which the deployable bundle does not carry")


def deployable_train_config(config_dir, record: dict | None = None) -> dict:
    """``train.json`` of the deployable bundle.

    The repository's train.json defaults to the synthetic set (a demonstration); the
    deployable one trains on a data list of the user's: ``<dataset_dir>/datalist.json`` by default,
    ``--datalist my_list.json --dataset_dir /data/nih`` or a dataset overlay otherwise. The network,
    input size and ``nvum`` settings are those of the run (``record``) so that training from the
    bundle trains what it holds; ``bundle_root`` is ``"."``.
    """
    config_dir = Path(config_dir)
    train = _read_config(config_dir, "train.json")
    train["bundle_root"] = "."
    train["dataset_dir"] = DEPLOY_DATASET_DIR
    train["datalist"] = DEPLOY_DATALIST
    record = record or {}
    if record.get("image_size") is not None:
        train["image_size"] = int(record["image_size"])
    if record.get("classes"):  # the model contract of the run: what its network outputs
        train["classes"] = [str(c) for c in record["classes"]]
    network_def = network_config(record.get("network"))  # None: a record naming only a class keeps the config's
    if network_def:
        train["network_def"] = network_def
    if isinstance(record.get("nvum"), dict) and isinstance(train.get("nvum"), dict):
        train["nvum"].update({k: v for k, v in record["nvum"].items() if k in train["nvum"]})
    _check_runtime_only(train, f"the deployable train.json made from {config_dir / 'train.json'}")
    return train


def deployable_overlay(config: dict) -> tuple[dict, list[str]]:
    """A dataset overlay whose data-list paths (``data_lists/...``, relative to the repository root) are
    made relative to ``bundle_root``; returns the overlay and the data-list file names it names."""
    out, names = copy.deepcopy(config), []
    for key, value in config.items():
        if isinstance(value, str) and value.startswith(f"{DATA_LISTS}/"):
            names.append(value[len(DATA_LISTS) + 1:])
            out[key] = f"$@bundle_root + '/{value}'"
    return out, names


def write_configs(source_dir: Path, folder: Path, inference: dict, metadata: dict, record: dict | None) -> None:
    """Write every config of the deployable bundle into ``folder/configs`` (and the overlays' data lists).

    Args:
        source_dir: the source bundle folder (the repository's ``bundle/`` or a deployable bundle).
        folder: the deployable bundle folder being assembled.
        inference, metadata: the deployable ``inference.json`` and ``metadata.json``.
        record: the run's record (network, input size, ``nvum`` settings) for ``train.json``.
    """
    source, configs = Path(source_dir) / "configs", Path(folder) / "configs"
    inference = dict(inference, bundle_root=".")
    _check_runtime_only(inference, f"the deployable inference.json made from {source / 'inference.json'}")
    write_json(inference, configs / "inference.json", indent=4)
    write_json(metadata, configs / "metadata.json", indent=4)
    write_json(deployable_train_config(source, record), configs / "train.json", indent=4)
    for name in PLAIN_CONFIGS:
        if name.endswith(".json"):
            config = _read_config(source, name)
            _check_runtime_only(config, source / name)
            write_json(config, configs / name, indent=4)
        else:
            if not (source / name).is_file():
                raise FileNotFoundError(f"bundle file not found: {source / name}")
            shutil.copy2(source / name, configs / name)
    for path in sorted((source / "datasets").glob("*.json")):
        overlay = resolve_includes(read_json(path, "dataset overlay"), source.parent.parent)
        if TOOLS_MODULE in json.dumps(overlay):  # an overlay naming a tool cannot run from the zip
            continue
        overlay, names = deployable_overlay(overlay)
        write_json(overlay, configs / "datasets" / path.name, indent=4)
        for name in names:  # the repository's data lists that exist (others are built by the user)
            if (source.parent.parent / DATA_LISTS / name).is_file():
                (folder / DATA_LISTS).mkdir(exist_ok=True)
                shutil.copy2(source.parent.parent / DATA_LISTS / name, folder / DATA_LISTS / name)
    if (source.parent / DATA_LISTS).is_dir():  # a deployable bundle as the source: its data lists
        shutil.copytree(source.parent / DATA_LISTS, folder / DATA_LISTS, dirs_exist_ok=True)


def write_licences(source_dir: Path, folder: Path) -> None:
    """``LICENSE`` (the code) and ``docs/data_license.txt`` (the datasets' terms) of the source bundle."""
    for name in (LICENSE_FILE, DATA_LICENSE_FILE):
        path = Path(source_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"bundle file not found: {path} (the model-zoo requires {LICENSE_FILE}; "
                                    f"{DATA_LICENSE_FILE} states the datasets' terms)")
        (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(folder) / name)


#: fenced code blocks and inline code spans of a Markdown page (no links are read in them).
_MD_CODE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$|`[^`\n]*`", re.MULTILINE | re.DOTALL)
#: link targets of a Markdown page: ``[text](target "title")``, ``![alt](target)``, ``[ref]: target``, ``src="target"``.
_MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)|^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)"
                      r"|\b(?:src|href)=\"([^\"]+)\"", re.MULTILINE)
#: a target with a scheme (``https:``, ``mailto:``) or only a fragment: not a file of the docs.
_EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|#)")


def page_links(text: str) -> list[str]:
    """The relative file links of a Markdown page (fragment and query dropped, %-escapes decoded), in order."""
    text = _MD_CODE.sub("", text)
    links = []
    for match in _MD_LINK.finditer(text):
        target = next(g for g in match.groups() if g is not None)
        if _EXTERNAL.match(target):
            continue
        target = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if target:
            links.append(target)
    return links


def doc_files(docs_dir) -> list[str]:
    """The files of ``docs_dir`` the deployable bundle carries: every page (``*.md``) of the folder
    and every file those pages link, followed from page to page (``figures/``, the noise benchmark's
    ``results.md`` and its curves), so that no link of a shipped page is broken in the zip; paths
    relative to ``docs_dir``, sorted. Files no page links (the benchmark's per-run records) stay out.

    Raises:
        FileNotFoundError: a page links a file that does not exist, or one outside ``docs_dir``.
    """
    docs_dir = Path(docs_dir).resolve()
    pages = sorted(docs_dir.glob("*.md"))
    files, todo = set(pages), list(pages)
    while todo:
        page = todo.pop()
        for link in page_links(page.read_text()):
            target = (page.parent / link).resolve()
            if not target.is_relative_to(docs_dir) or not target.is_file():
                where = "outside the docs folder" if not target.is_relative_to(docs_dir) else "not found"
                raise FileNotFoundError(f"{page}: link {link!r}: {target} {where} (the deployable zip carries "
                                        f"{docs_dir} only)")
            if target not in files:
                files.add(target)
                if target.suffix == ".md":
                    todo.append(target)
    return sorted(p.relative_to(docs_dir).as_posix() for p in files)


def write_docs(source_dir: Path, folder: Path) -> list[str]:
    """Copy the source bundle's ``docs/`` pages and the files they link (:func:`doc_files`) into
    ``folder/docs``; the paths copied, relative to ``docs/``."""
    source_docs = Path(source_dir) / "docs"
    if not (source_docs / "README.md").is_file():
        raise FileNotFoundError(f"bundle file not found: {source_docs / 'README.md'}")
    names = doc_files(source_docs)
    for name in names:
        (Path(folder) / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_docs / name, Path(folder) / "docs" / name)
    return names


def write_large_files(folder: Path, url_base: str | None = None, limit: int = LARGE_FILE_BYTES) -> list[dict]:
    """List the files of ``folder/models`` over ``limit`` bytes in ``folder/large_files.yml``, model-zoo style.

    Each entry has ``path`` (relative to the bundle folder), ``url`` (``<url_base>/<file name>``, or
    empty until the files are published somewhere), ``hash_val`` (sha256) and ``hash_type``. The
    bundle zip carries the files themselves; the list lets a copy without them (a model-zoo pull
    request, where no file may exceed 25 MB) be completed and checked (MONAI's ``download_url``
    skips a file that exists with the right hash). Nothing is written when no file is that large.

    Returns:
        the entries written.
    """
    folder = Path(folder)
    entries = []
    for path in sorted(p for p in (folder / "models").glob("*") if p.is_file() and p.stat().st_size > limit):
        url = f"{url_base.rstrip('/')}/{path.name}" if url_base else ""
        entries.append({"path": path.relative_to(folder).as_posix(), "url": url, "hash_val": file_sha256(path),
                        "hash_type": "sha256"})
    if entries:
        lines = ["# model files over the model-zoo's 25 MB file limit (the bundle zip carries them); url: where they",
                 "# are published, empty until then", "large_files:"]
        for e in entries:
            lines += [f'- path: "{e["path"]}"', f'  url: "{e["url"]}"', f'  hash_val: "{e["hash_val"]}"',
                      f'  hash_type: "{e["hash_type"]}"']
        (folder / "large_files.yml").write_text("\n".join(lines) + "\n")
    return entries
