"""Trust campaign, CLI and bad inputs (issue 7, section 4): every usage error and every bad input of
every command gives one ``error:`` line and one ``fix:`` line on stderr, exit code 2, no traceback,
and nothing written.

Categories: ``cli`` (usage errors: missing/unknown/badly typed options and arguments, unknown
commands, unreadable paths) and ``inputs`` (labels, templates, sampling options, batch sizes bounded
by memory, bench options, a bundle of the wrong architecture, runtime sizes).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from util import assert_contract, package_env

pytest.importorskip("torch")
pytest.importorskip("transformers")

from clip_models import save_bare, tiny_open_clip  # noqa: E402
from llava_fixtures import make_tiny_llava  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.errors import InputError  # noqa: E402

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# root reads any file; without the DAC capabilities (capsh) it obeys file permissions like anyone else
DROP_DAC = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c"] if IS_ROOT else None
CAN_LOCK = not IS_ROOT or shutil.which("capsh") is not None


# ---- helpers -------------------------------------------------------------------------------------

def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
        unprivileged: bool = False) -> subprocess.CompletedProcess:
    """``rsvlm-edge ARGS`` in a subprocess (stdin closed), text output captured; ``unprivileged``:
    without root's power to read any file."""
    cmd = [sys.executable, "-m", "rsvlm_edge.cli", *map(str, args)]
    if unprivileged and DROP_DAC:
        cmd = [*DROP_DAC, shlex.join(cmd)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**package_env(), **(env or {})}, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def campaign(category: str, when: bool = True):
    """The campaign mark, only where the case can run here (a case that must be skipped in this
    environment is not part of its campaign, rather than a case tried and not passed)."""
    return pytest.mark.campaign(category) if when else (lambda f: f)


HAS_RASTERIO = importlib.util.find_spec("rasterio") is not None


# ---- fixtures (built once per module) ------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults_cli")


@pytest.fixture(scope="module")
def clip_bundle(root) -> Path:
    from rsvlm_edge.export.clip import export_clip

    return export_clip(save_bare(tiny_open_clip(seed=5), root / "clip.pt"), root / "clip.rsvlm", max_batch=8).path


@pytest.fixture(scope="module")
def vlm_bundle(root) -> Path:
    from rsvlm_edge.export.llava import export_vlm

    make_tiny_llava(root / "vlm_ckpt", layout="llava", fmt="safetensors")
    return export_vlm(root / "vlm_ckpt", root / "vlm.rsvlm", weights="w8").path


@pytest.fixture(scope="module")
def img(root) -> Path:
    p = root / "scene.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(p)
    return p


@pytest.fixture(scope="module")
def folder(root, img) -> Path:
    d = root / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(10 + i).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


@pytest.fixture(scope="module")
def places(root, img, folder) -> dict[str, str]:
    """Placeholders of the usage cases: files that exist (bundles are not needed to fail parsing)."""
    return {"B": str(root / "any.rsvlm"), "IMG": str(img), "DIR": str(folder), "CKPT": str(root / "ckpt.pt"),
            "OUT": str(root / "out.rsvlm"), "SCENE": str(root / "scene.tif")}


def fill(argv: list[str], places: dict[str, str]) -> list[str]:
    return [places.get(a, a) for a in argv]


# ---- cli: usage errors ---------------------------------------------------------------------------

MISSING = {
    "classify-no-args": (["classify"], "Missing argument"),
    "classify-no-images": (["classify", "B"], "Missing argument"),
    "classify-no-labels": (["classify", "B", "IMG"], "Missing option '--labels'"),
    "embed-no-args": (["embed"], "Missing argument"),
    "embed-no-output": (["embed", "B", "IMG"], "Missing option"),
    "ask-no-args": (["ask"], "Missing argument"),
    "ask-no-image": (["ask", "B"], "Missing argument"),
    "ask-no-question": (["ask", "B", "IMG"], "Missing argument"),
    "caption-no-args": (["caption"], "Missing argument"),
    "caption-no-images": (["caption", "B"], "Missing argument"),
    "compare-no-args": (["compare"], "Missing argument"),
    "compare-no-images": (["compare", "B", "B"], "Missing argument"),
    "scene-no-args": (["classify-scene"], "Missing argument"),
    "scene-no-labels": (["classify-scene", "B", "SCENE"], "Missing option '--labels'"),
    "info-no-args": (["info"], "Missing argument"),
    "export-clip-no-args": (["export", "clip"], "Missing argument"),
    "export-clip-no-output": (["export", "clip", "CKPT"], "Missing option"),
    "export-vlm-no-args": (["export", "vlm"], "Missing argument"),
    "export-vlm-no-output": (["export", "vlm", "CKPT"], "Missing option"),
    "export-no-command": (["export"], "missing command"),
    "labels-needs-value": (["classify", "B", "IMG", "--labels"], "requires an argument"),
    "output-needs-value": (["embed", "B", "IMG", "-o"], "requires an argument"),
    "bench-batch-needs-value": (["bench", "--batch"], "requires an argument"),
    "doctor-json-needs-value": (["doctor", "--json"], "requires an argument"),
    "ask-json-needs-value": (["ask", "B", "IMG", "q", "--json"], "requires an argument"),
}

BAD_VALUE = {
    "classify-top-k-word": (["classify", "B", "IMG", "--labels", "a,b", "--top-k", "three"], "--top-k"),
    "classify-batch-float": (["classify", "B", "IMG", "--labels", "a,b", "--batch-size", "1.5"], "--batch-size"),
    "embed-batch-word": (["embed", "B", "IMG", "-o", "e.npz", "--batch-size", "x"], "--batch-size"),
    "ask-max-new-word": (["ask", "B", "IMG", "q", "--max-new-tokens", "many"], "--max-new-tokens"),
    "ask-temperature-word": (["ask", "B", "IMG", "q", "--temperature", "hot"], "--temperature"),
    "ask-top-p-word": (["ask", "B", "IMG", "q", "--top-p", "most"], "--top-p"),
    "ask-seed-float": (["ask", "B", "IMG", "q", "--seed", "1.5"], "--seed"),
    "caption-batch-word": (["caption", "B", "IMG", "--batch-size", "eight"], "--batch-size"),
    "caption-max-new-float": (["caption", "B", "IMG", "--max-new-tokens", "2.5"], "--max-new-tokens"),
    "compare-steps-word": (["compare", "B", "B", "IMG", "--steps", "many"], "--steps"),
    "bench-iters-word": (["bench", "--iters", "x"], "--iters"),
    "bench-warmup-float": (["bench", "--warmup", "1.5"], "--warmup"),
    "bench-threads-word": (["bench", "--threads", "two"], "--threads"),
    "bench-max-new-word": (["bench", "--max-new-tokens", "x"], "--max-new-tokens"),
    "export-clip-max-batch": (["export", "clip", "CKPT", "-o", "OUT", "--max-batch", "big"], "--max-batch"),
    "export-vlm-image-size": (["export", "vlm", "CKPT", "-o", "OUT", "--image-size", "big"], "--image-size"),
    "scene-tile-word": (["classify-scene", "B", "SCENE", "--labels", "a,b", "--tile", "x"], "--tile"),
    "scene-stride-float": (["classify-scene", "B", "SCENE", "--labels", "a,b", "--stride", "2.5"], "--stride"),
    "scene-max-nodata-word": (["classify-scene", "B", "SCENE", "--labels", "a,b", "--max-nodata", "half"], "--max-nodata"),
    "classify-on-error-choice": (["classify", "B", "IMG", "--labels", "a,b", "--on-error", "sometimes"], "--on-error"),
    "embed-on-error-choice": (["embed", "B", "IMG", "-o", "e.npz", "--on-error", "ignore"], "--on-error"),
    "ask-flag-with-value": (["ask", "B", "IMG", "q", "--boxes=maybe"], "--boxes"),
    "export-overwrite-with-value": (["export", "clip", "CKPT", "-o", "OUT", "--overwrite=yes"], "--overwrite"),
}

UNKNOWN_COMMAND = {
    "top-level": (["nosuch"], "No such command"),
    "typo": (["classfy", "B", "IMG"], "No such command"),
    "export-sub": (["export", "nosuch"], "No such command"),
    "export-typo": (["export", "clipp", "CKPT"], "No such command"),
    "extra-argument": (["info", "B", "extra"], "unexpected extra argument"),
}

UNKNOWN_OPTION = {
    "top-level": ["--bogus"],
    "classify": ["classify", "B", "IMG", "--labels", "a", "--bogus"],
    "embed": ["embed", "B", "IMG", "-o", "e.npz", "--bogus"],
    "ask": ["ask", "B", "IMG", "q", "--bogus"],
    "caption": ["caption", "B", "IMG", "--bogus"],
    "compare": ["compare", "B", "B", "IMG", "--bogus"],
    "classify-scene": ["classify-scene", "B", "SCENE", "--labels", "a", "--bogus"],
    "bench": ["bench", "--bogus"],
    "info": ["info", "B", "--bogus"],
    "doctor": ["doctor", "--bogus"],
    "export": ["export", "--bogus"],
    "export-clip": ["export", "clip", "CKPT", "-o", "OUT", "--bogus"],
    "export-vlm": ["export", "vlm", "CKPT", "-o", "OUT", "--bogus"],
    "short-option": ["classify", "B", "IMG", "--labels", "a", "-z"],
}

COMMANDS = [["classify"], ["embed"], ["ask"], ["caption"], ["compare"], ["classify-scene"], ["bench"], ["info"], ["doctor"],
            ["export"], ["export", "clip"], ["export", "vlm"], []]


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("case", list(MISSING), ids=list(MISSING))
def test_missing_argument_or_option(case, places, root):
    argv, needle = MISSING[case]
    assert_contract(cli(*fill(argv, places)), needle, "--help")
    assert not (root / "out.rsvlm").exists()


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("case", list(BAD_VALUE), ids=list(BAD_VALUE))
def test_badly_typed_option(case, places):
    argv, needle = BAD_VALUE[case]
    assert_contract(cli(*fill(argv, places)), needle)


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("case", list(UNKNOWN_COMMAND), ids=list(UNKNOWN_COMMAND))
def test_unknown_command(case, places):
    argv, needle = UNKNOWN_COMMAND[case]
    assert_contract(cli(*fill(argv, places)), needle)


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("case", list(UNKNOWN_OPTION), ids=list(UNKNOWN_OPTION))
def test_unknown_option(case, places):
    r = cli(*fill(UNKNOWN_OPTION[case], places))
    assert_contract(r, "No such option")


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) or "top-level" for c in COMMANDS])
def test_help_of_every_command(cmd):
    r = cli(*cmd, "--help")
    assert r.returncode == 0 and "Usage: rsvlm-edge" in r.stdout and "Traceback" not in r.stdout + r.stderr


@pytest.mark.campaign("cli")
def test_bare_command_prints_help_and_succeeds():
    r = cli()
    assert r.returncode == 0 and "Usage" in r.stdout and "Commands" in r.stdout and not r.stderr.strip()


@pytest.mark.campaign("cli")
def test_run_app_maps_both_clicks_to_exit_2(capsys):
    """typer >= 0.29 vendors its own click (typer._click): its usage errors must be caught like
    click's; checked in-process on run_app itself."""
    typer = pytest.importorskip("typer")
    from rsvlm_edge.cli import app
    from rsvlm_edge.cli.common import _click_exceptions, run_app

    classes = _click_exceptions()["usage"]
    if hasattr(typer, "_click"):
        assert typer._click.exceptions.UsageError in classes
    assert run_app(app, ["classify", "--no-such"]) == 2
    assert run_app(app, ["nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


# ---- cli: unreadable paths -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_paths(root) -> dict[str, str]:
    loop = root / "loop.png"
    if not os.path.lexists(loop):
        os.symlink(loop, loop)
    fifo = root / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    empty = root / "empty_dir"
    empty.mkdir(exist_ok=True)
    (empty / "notes.txt").write_text("not an image")
    plain = root / "plain_file.rsvlm"
    plain.write_text("not a bundle")
    return {"MISSING": str(root / "missing.rsvlm"), "NOIMG": str(root / "missing.png"), "LOOP": str(loop),
            "FIFO": str(fifo), "EMPTY": str(empty), "FILEB": str(plain), "LONG": str(root / ("x" * 300 + ".png")),
            "NOCKPT": str(root / "nope.pt")}


PATH_CASES = {
    "classify-missing-bundle": (["classify", "MISSING", "IMG", "--labels", "a,b"], "does not exist"),
    "embed-missing-bundle": (["embed", "MISSING", "IMG", "-o", "OUTNPZ"], "does not exist"),
    "ask-missing-bundle": (["ask", "MISSING", "IMG", "what?"], "does not exist"),
    "caption-missing-bundle": (["caption", "MISSING", "IMG"], "does not exist"),
    "scene-missing-bundle": (["classify-scene", "MISSING", "IMG", "--labels", "a,b"], "does not exist"),
    "info-missing-bundle": (["info", "MISSING"], "does not exist"),
    "bench-missing-bundle": (["bench", "MISSING", "--no-peer"], "does not exist"),
    "classify-bundle-is-file": (["classify", "FILEB", "IMG", "--labels", "a,b"], "not a bundle directory"),
    "ask-bundle-is-file": (["ask", "FILEB", "IMG", "what?"], "not a bundle directory"),
    "info-bundle-is-file": (["info", "FILEB"], "not a bundle directory"),
    "classify-missing-image": (["classify", "CLIP", "NOIMG", "--labels", "a,b"], "does not exist"),
    "embed-missing-image": (["embed", "CLIP", "NOIMG", "-o", "OUTNPZ"], "does not exist"),
    "ask-missing-image": (["ask", "VLM", "NOIMG", "what?"], "does not exist"),
    "caption-missing-image": (["caption", "VLM", "NOIMG"], "does not exist"),
    "compare-missing-bundle": (["compare", "MISSING", "VLM", "IMG"], "does not exist"),
    "compare-missing-image": (["compare", "VLM", "VLM", "NOIMG"], "does not exist"),
    "compare-clip-bundle": (["compare", "VLM", "CLIP", "IMG"], "need a VLM bundle"),
    "classify-no-images-in-folder": (["classify", "CLIP", "EMPTY", "--labels", "a,b"], "no images found"),
    "embed-no-images-in-folder": (["embed", "CLIP", "EMPTY", "-o", "OUTNPZ"], "no images found"),
    "caption-no-images-in-folder": (["caption", "VLM", "EMPTY"], "no images found"),
    "classify-symlink-loop": (["classify", "CLIP", "LOOP", "--labels", "a,b"], "loop.png"),
    "embed-symlink-loop": (["embed", "CLIP", "LOOP", "-o", "OUTNPZ"], "loop.png"),
    "classify-fifo-image": (["classify", "CLIP", "FIFO", "--labels", "a,b"], "pipe.png"),
    "ask-fifo-image": (["ask", "VLM", "FIFO", "what?"], "pipe.png"),
    "classify-name-too-long": (["classify", "CLIP", "LONG", "--labels", "a,b"], "xxxx"),
    "ask-name-too-long": (["ask", "VLM", "LONG", "what?"], "xxxx"),
    "export-clip-missing-checkpoint": (["export", "clip", "NOCKPT", "-o", "OUT"], "does not exist"),
    "export-vlm-missing-checkpoint": (["export", "vlm", "NOCKPT", "-o", "OUT"], "does not exist"),
    "scene-missing-scene": (["classify-scene", "CLIP", "NOIMG", "--labels", "a,b"], "does not exist"),
    "labels-file-missing": (["classify", "CLIP", "IMG", "--labels", "@NOIMG"], "does not exist"),
}
if not HAS_RASTERIO:  # classify-scene first says that rasterio is missing
    PATH_CASES = {k: v for k, v in PATH_CASES.items() if not k.startswith("scene-")}


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("case", list(PATH_CASES), ids=list(PATH_CASES))
def test_unreadable_paths(case, places, odd_paths, clip_bundle, vlm_bundle, root):
    argv, needle = PATH_CASES[case]
    subst = {**places, **odd_paths, "CLIP": str(clip_bundle), "VLM": str(vlm_bundle), "OUTNPZ": str(root / "e.npz")}
    argv = [subst.get(a, a) if not a.startswith("@") else "@" + subst.get(a[1:], a[1:]) for a in argv]
    before = sorted(p.name for p in root.iterdir())
    assert_contract(cli(*argv), needle)
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written, no temp files


@campaign("cli", CAN_LOCK)
@pytest.mark.skipif(not CAN_LOCK, reason="root reads files whatever their permissions (and no capsh here)")
@pytest.mark.parametrize("what", ["image", "labels", "bundle-file"])
def test_permission_denied(what, clip_bundle, img, tmp_path):
    p = tmp_path / ("locked.png" if what == "image" else "labels.txt")
    if what == "image":
        p.write_bytes(img.read_bytes())
    else:
        p.write_text("forest\nriver\n")
    bundle = clip_bundle
    if what == "bundle-file":
        bundle = tmp_path / "copy.rsvlm"
        shutil.copytree(clip_bundle, bundle)
        p = bundle / "tokenizer.json"
    p.chmod(0)
    args = [str(p), "--labels", "a,b"] if what == "image" else [str(img), "--labels", f"@{p}" if what == "labels" else "a,b"]
    assert_contract(cli("classify", str(bundle), *args, unprivileged=True), p.name)


# ---- inputs: labels ------------------------------------------------------------------------------

LABEL_FILES = {
    "latin1": ("forêt\nrivière\n".encode("latin-1"), "not UTF-8"),
    "utf16": ("forest\nriver\n".encode("utf-16"), "UTF-8"),
    "binary": (bytes(range(256)), "UTF-8"),
    "empty": (b"", "label list is empty"),
    "blank-lines": (b"\n   \n\t\n", "label list is empty"),
    "duplicates": (b"forest\nriver\nforest\n", "repeats"),
    "case-duplicates": (b"Forest\nforest\n", "repeats"),
    "nul-bytes": (b"forest\x00\nriver\n", "NUL"),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(LABEL_FILES), ids=list(LABEL_FILES))
def test_bad_label_files(case, clip_bundle, img, tmp_path):
    data, needle = LABEL_FILES[case]
    f = tmp_path / "labels.txt"
    f.write_bytes(data)
    assert_contract(cli("classify", clip_bundle, img, "--labels", f"@{f}"), needle)


@pytest.mark.campaign("inputs")
def test_label_file_that_is_a_directory(clip_bundle, img, tmp_path):
    assert_contract(cli("classify", clip_bundle, img, "--labels", f"@{tmp_path}"), "not a file")


INLINE_LABELS = {
    "empty": ("", "label list is empty"),
    "only-spaces": ("   ", "label list is empty"),
    "only-commas": (",,", "empty or whitespace-only label"),
    "whitespace-entry": ("forest, ,river", "empty or whitespace-only label"),
    "trailing-comma": ("forest,river,", "trailing comma"),
    "duplicate": ("forest,river,forest", "repeats 'forest'"),
    "case-duplicate": ("Forest,forest", "repeats"),
    "spacing-duplicate": ("dense  forest,dense forest", "repeats"),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(INLINE_LABELS), ids=list(INLINE_LABELS))
def test_bad_inline_labels(case, clip_bundle, img):
    labels, needle = INLINE_LABELS[case]
    assert_contract(cli("classify", clip_bundle, img, "--labels", labels), needle)


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("labels", [["forest", "forest"], ["a", " "], [], ["River", "river "]])
def test_bad_labels_api(labels, clip_bundle):
    rt = rsvlm_edge.load(clip_bundle)
    with pytest.raises(InputError):
        rt.classify(np.zeros((1, 64, 64, 3), np.uint8), labels)


@pytest.mark.campaign("inputs")
def test_labels_with_braces_and_unicode_are_fine(clip_bundle, img, tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\ufeffforêt {dense}\n\nriver }{\n東京\n", encoding="utf-8")
    r = cli("classify", clip_bundle, img, "--labels", f"@{f}", "--json", tmp_path / "o.json")
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads((tmp_path / "o.json").read_text())["labels"] == ["forêt {dense}", "river }{", "東京"]


# ---- inputs: templates ---------------------------------------------------------------------------

TEMPLATES = {
    "named-field": ("a photo of {name}.", "named field {name}"),
    "two-fields": ("{} next to {}", "2 fields"),
    "three-fields": ("{} {} {}", "3 fields"),
    "positional-1": ("a photo of {1}.", "named field"),
    "attribute": ("{0.__class__}", "named field"),
    "index": ("{[0]}", "named field"),
    "unbalanced-open": ("a photo of {.", "unbalanced"),
    "unbalanced-close": ("a photo of }.", "unbalanced"),
    "lone-open-with-field": ("{ {}", "unbalanced"),
    "conversion": ("a photo of {!r}.", "formats its field"),
    "format-spec": ("a photo of {:>20}.", "formats its field"),
    "no-field-unknown-set": ("satelite", "unknown template set"),
    "empty": ("", "unknown template set"),
    "only-escaped": ("a photo of {{}}.", "no {} field"),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(TEMPLATES), ids=list(TEMPLATES))
def test_bad_templates_classify(case, clip_bundle, img):
    template, needle = TEMPLATES[case]
    assert_contract(cli("classify", clip_bundle, img, "--labels", "forest,river", "--templates", template), needle)


@campaign("inputs", HAS_RASTERIO)
@pytest.mark.parametrize("case", ["named-field", "two-fields", "unbalanced-open"])
def test_bad_templates_classify_scene(case, clip_bundle, img):
    pytest.importorskip("rasterio")
    template, needle = TEMPLATES[case]
    assert_contract(cli("classify-scene", clip_bundle, img, "--labels", "forest,river", "--templates", template), needle)


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("templates", [["{name}"], ["a {}", "{} {}"], [], ["{"], [3]])
def test_bad_templates_api(templates, clip_bundle):
    rt = rsvlm_edge.load(clip_bundle)
    with pytest.raises(InputError):
        rt.class_embeddings(["forest", "river"], templates)


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("template", ["a photo of {0}.", "{{literal}} {}", "{}"])
def test_good_templates_are_accepted(template, clip_bundle):
    rt = rsvlm_edge.load(clip_bundle)
    emb = rt.class_embeddings(["forest", "river"], [template])
    expect = rt.encode_texts([template.format(x) for x in ("forest", "river")])
    np.testing.assert_allclose(emb, expect, atol=1e-5)


# ---- inputs: sampling and generation options -----------------------------------------------------

ASK_OPTIONS = {
    "temperature-nan": (["--temperature", "nan"], "--temperature"),
    "temperature-inf": (["--temperature", "inf"], "--temperature"),
    "temperature-negative": (["--temperature", "-1"], "--temperature"),
    "top-p-zero": (["--top-p", "0"], "--top-p"),
    "top-p-two": (["--top-p", "2"], "--top-p"),
    "top-p-negative": (["--top-p", "-0.5"], "--top-p"),
    "top-p-nan": (["--top-p", "nan"], "--top-p"),
    "max-new-tokens-zero": (["--max-new-tokens", "0"], "--max-new-tokens"),
    "max-new-tokens-negative": (["--max-new-tokens", "-5"], "--max-new-tokens"),
    "seed-negative": (["--seed", "-1"], "--seed"),
    "seed-huge": (["--seed", str(2**70)], "--seed"),
    "unknown-task": (["--task", "segment"], "unknown GeoChat task"),
    "unknown-template": (["--template", "chatml"], "unknown chat template"),
    "max-new-tokens-beyond-cache": (["--max-new-tokens", "100000"], "KV cache"),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(ASK_OPTIONS), ids=list(ASK_OPTIONS))
def test_bad_ask_options(case, vlm_bundle, img, tmp_path):
    extra, needle = ASK_OPTIONS[case]
    out = tmp_path / "a.json"
    r = cli("ask", vlm_bundle, img, "What is here?", *extra, "--json", out)
    assert_contract(r, needle)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("question,needle", [("", "question is empty"), ("   ", "question is empty"),
                                             ("<image> what is here?", "<image>")])
def test_bad_questions(question, needle, vlm_bundle, img):
    assert_contract(cli("ask", vlm_bundle, img, question), needle)


CAPTION_OPTIONS = {
    "batch-size-zero": (["--batch-size", "0"], "--batch-size"),
    "batch-size-negative": (["--batch-size", "-4"], "--batch-size"),
    "max-new-tokens-zero": (["--max-new-tokens", "0"], "--max-new-tokens"),
    "empty-prompt": (["--prompt", " "], "--prompt is empty"),
    "prompt-with-image-tag": (["--prompt", "<image> describe"], "<image>"),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(CAPTION_OPTIONS), ids=list(CAPTION_OPTIONS))
def test_bad_caption_options(case, vlm_bundle, folder):
    extra, needle = CAPTION_OPTIONS[case]
    assert_contract(cli("caption", vlm_bundle, folder, *extra), needle)


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("temperature", ["1e-300", "5e-324", "1e308"])
def test_extreme_but_valid_temperatures_generate(temperature, vlm_bundle, img):
    """A temperature so small that logits / T overflows decodes greedily (its limit); a huge one
    samples almost uniformly: both answer, without NaN warnings or errors."""
    r = cli("ask", vlm_bundle, img, "What is here?", "--temperature", temperature, "--max-new-tokens", "4",
            "--no-stream")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr
    if float(temperature) < 1e-200:
        greedy = cli("ask", vlm_bundle, img, "What is here?", "--max-new-tokens", "4", "--no-stream")
        assert r.stdout == greedy.stdout


# ---- inputs: batch sizes bounded by a memory estimate --------------------------------------------

BATCH_CASES = {
    "classify-1e6-limited": (["classify", "CLIP", "IMG", "--labels", "a,b", "--batch-size", "1000000"], "1G"),
    "embed-1e6-limited": (["embed", "CLIP", "IMG", "-o", "OUT", "--batch-size", "1000000"], "1G"),
    "classify-1e9": (["classify", "CLIP", "IMG", "--labels", "a,b", "--batch-size", "1000000000"], None),
    "embed-1e9": (["embed", "CLIP", "IMG", "-o", "OUT", "--batch-size", "1000000000"], None),
    "caption-1e6": (["caption", "VLM", "IMG", "--batch-size", "1000000"], None),
    "caption-1e4-limited": (["caption", "VLM", "IMG", "--batch-size", "10000"], "64M"),
    "bench-clip-1e6-limited": (["bench", "CLIP", "--batch", "1,1000000", "--no-peer"], "1G"),
    "bench-clip-1e9": (["bench", "CLIP", "--batch", "1000000000", "--no-peer"], None),
    "bench-vlm-1e6": (["bench", "VLM", "--batch", "1000000", "--no-peer"], None),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(BATCH_CASES), ids=list(BATCH_CASES))
def test_batch_size_bounded_by_memory(case, clip_bundle, vlm_bundle, img, tmp_path):
    argv, limit = BATCH_CASES[case]
    subst = {"CLIP": str(clip_bundle), "VLM": str(vlm_bundle), "IMG": str(img), "OUT": str(tmp_path / "e.npz")}
    env = {"RSVLM_EDGE_MAX_MEMORY": limit} if limit else None
    r = cli(*[subst.get(a, a) for a in argv], env=env, timeout=120)
    assert_contract(r, "needs about", "of memory", "or less" if "bench" not in case else "batch sizes up to")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.campaign("inputs")
def test_batch_size_within_memory_still_runs(clip_bundle, folder, tmp_path):
    r = cli("embed", clip_bundle, folder, "-o", tmp_path / "e.npz", "--batch-size", "2",
            env={"RSVLM_EDGE_MAX_MEMORY": "1G"})
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (3, 64)


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("value", ["lots", "-1G", "0"])
def test_bad_memory_limit_variable(value, clip_bundle, img):
    r = cli("classify", clip_bundle, img, "--labels", "a,b", "--batch-size", "4", env={"RSVLM_EDGE_MAX_MEMORY": value})
    assert_contract(r, "RSVLM_EDGE_MAX_MEMORY")


# ---- inputs: bench options -----------------------------------------------------------------------

BENCH_OPTIONS = {
    "iters-zero": (["--iters", "0"], "--iters"),
    "iters-negative": (["--iters", "-3"], "--iters"),
    "warmup-negative": (["--warmup", "-1"], "--warmup"),
    "threads-zero": (["--threads", "0"], "--threads"),
    "threads-negative": (["--threads", "-2"], "--threads"),
    "batch-zero": (["--batch", "0"], "--batch"),
    "batch-negative": (["--batch", "1,-8"], "--batch"),
    "batch-empty": (["--batch", ""], "--batch"),
    "batch-words": (["--batch", "a,b"], "--batch"),
    "precision-unknown": (["--precision", "fp64"], "--precision"),
    "precision-empty": (["--precision", ","], "--precision"),
    "vlm-max-new-tokens-one": (["VLM", "--max-new-tokens", "1"], "--max-new-tokens"),
    "vlm-max-new-tokens-zero": (["VLM", "--max-new-tokens", "0"], "--max-new-tokens"),
    "unknown-builtin": (["builtin:nope"], "unknown built-in model"),
    "json-is-directory": (["CLIP", "--json", "DIR"], "is a directory"),
    "plot-is-directory": (["CLIP", "--plot", "DIR"], "is a directory"),
}


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(BENCH_OPTIONS), ids=list(BENCH_OPTIONS))
def test_bad_bench_options(case, clip_bundle, vlm_bundle, tmp_path):
    extra, needle = BENCH_OPTIONS[case]
    subst = {"CLIP": str(clip_bundle), "VLM": str(vlm_bundle), "DIR": str(tmp_path)}
    argv = [subst.get(a, a) for a in extra]
    if not argv or argv[0].startswith("-"):
        argv = [str(clip_bundle), *argv]
    assert_contract(cli("bench", *argv, "--no-peer", timeout=120), needle)


# ---- inputs: top-k, architecture mismatch, classify-scene options ---------------------------------

@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("k", ["0", "-1"])
def test_bad_top_k(k, clip_bundle, img):
    assert_contract(cli("classify", clip_bundle, img, "--labels", "a,b", "--top-k", k), "--top-k")


@pytest.mark.campaign("inputs")
def test_huge_top_k_shows_every_label(clip_bundle, img, tmp_path):
    r = cli("classify", clip_bundle, img, "--labels", "a,b,c", "--top-k", "1000", "--json", tmp_path / "o.json")
    assert r.returncode == 0, r.stderr
    import json

    assert len(json.loads((tmp_path / "o.json").read_text())["results"][0]["top"]) == 3


MISMATCH = {
    "classify-on-vlm": (["classify", "VLM", "IMG", "--labels", "a,b"], "llava bundle", "CLIP"),
    "embed-on-vlm": (["embed", "VLM", "IMG", "-o", "OUT"], "llava bundle", "CLIP"),
    "classify-scene-on-vlm": (["classify-scene", "VLM", "IMG", "--labels", "a,b"], "llava bundle", "CLIP"),
    "ask-on-clip": (["ask", "CLIP", "IMG", "what?"], "clip bundle", "VLM"),
    "caption-on-clip": (["caption", "CLIP", "IMG"], "clip bundle", "VLM"),
}
if not HAS_RASTERIO:
    MISMATCH.pop("classify-scene-on-vlm")


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("case", list(MISMATCH), ids=list(MISMATCH))
def test_bundle_of_the_wrong_architecture(case, clip_bundle, vlm_bundle, img, tmp_path):
    argv, *needles = MISMATCH[case]
    subst = {"CLIP": str(clip_bundle), "VLM": str(vlm_bundle), "IMG": str(img), "OUT": str(tmp_path / "e.npz")}
    assert_contract(cli(*[subst.get(a, a) for a in argv]), *needles)
    assert list(tmp_path.iterdir()) == []


SCENE_OPTIONS = {
    "tile-zero": (["--tile", "0"], "--tile"),
    "tile-negative": (["--tile", "-64"], "--tile"),
    "stride-zero": (["--stride", "0"], "--stride"),
    "stride-larger-than-tile": (["--tile", "32", "--stride", "64"], "--stride"),
    "max-nodata-above-one": (["--max-nodata", "2"], "--max-nodata"),
    "max-nodata-nan": (["--max-nodata", "nan"], "--max-nodata"),
    "stretch-reversed": (["--stretch", "98,2"], "--stretch"),
    "stretch-nan": (["--stretch", "nan,5"], "--stretch"),
    "stretch-out-of-range": (["--stretch", "-1,101"], "--stretch"),
    "stretch-one-number": (["--stretch", "5"], "--stretch"),
    "bands-zero": (["--bands", "0,1,2"], "--bands"),
    "bands-two": (["--bands", "1,2"], "--bands"),
    "bands-words": (["--bands", "r,g,b"], "--bands"),
    "geojson-is-directory": (["--geojson", "DIR"], "is a directory"),
    "label-raster-is-directory": (["--label-raster", "DIR"], "is a directory"),
}


@campaign("inputs", HAS_RASTERIO)
@pytest.mark.parametrize("case", list(SCENE_OPTIONS), ids=list(SCENE_OPTIONS))
def test_bad_classify_scene_options(case, clip_bundle, img, tmp_path):
    pytest.importorskip("rasterio")
    extra, needle = SCENE_OPTIONS[case]
    argv = [str(tmp_path) if a == "DIR" else a for a in extra]
    assert_contract(cli("classify-scene", clip_bundle, img, "--labels", "forest,river", *argv), needle)
    assert list(tmp_path.iterdir()) == []


# ---- inputs: runtime sizes (load) ----------------------------------------------------------------

@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("max_seq", [513, 10**9, 2**63])
def test_vlm_max_seq_beyond_context_refused(max_seq, vlm_bundle):
    with pytest.raises(InputError, match="exceeds the model's context of 512"):
        rsvlm_edge.load(vlm_bundle, max_seq=max_seq)


@pytest.mark.campaign("inputs")
def test_vlm_max_seq_at_context_accepted(vlm_bundle):
    rt = rsvlm_edge.load(vlm_bundle, max_seq=512, max_batch=1)
    assert rt.decoder.max_seq == 512


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("kw,value", [("max_seq", 0), ("max_seq", -1), ("max_seq", "8"), ("max_seq", 2.5),
                                      ("max_seq", True), ("max_batch", 0), ("max_batch", -3), ("max_batch", "8"),
                                      ("max_batch", True), ("max_batch", 1.0), ("threads", 0), ("threads", -1)])
def test_vlm_bad_sizes_refused(kw, value, vlm_bundle):
    with pytest.raises(InputError, match=f"{kw} must be a positive integer"):
        rsvlm_edge.load(vlm_bundle, **{kw: value})


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("kw,value,needle", [("max_batch", 0, "positive integer"), ("max_batch", -1, "positive integer"),
                                             ("max_batch", 9, "larger than the 8"), ("max_batch", "4", "positive integer"),
                                             ("threads", 0, "positive integer")])
def test_clip_bad_sizes_refused(kw, value, needle, clip_bundle):
    with pytest.raises(InputError, match=needle):
        rsvlm_edge.load(clip_bundle, **{kw: value})


@pytest.mark.campaign("inputs")
@pytest.mark.parametrize("kw,value", [("temperature", float("nan")), ("top_p", 0.0), ("top_p", 2.0),
                                      ("max_new_tokens", 0), ("seed", -1), ("temperature", True)])
def test_vlm_generate_bad_options_refused(kw, value, vlm_bundle):
    rt = rsvlm_edge.load(vlm_bundle, max_batch=1)
    with pytest.raises(InputError):
        rt.generate([np.zeros((32, 32, 3), np.uint8)], ["What?"], **{"max_new_tokens": 2, kw: value})
