"""``rsvlm-edge --max-image-pixels N``: the decode limit every command honours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from clip_models import save_bare, tiny_open_clip  # noqa: E402
from util import run_cli  # noqa: E402

from rsvlm_edge.export.clip import export_clip  # noqa: E402


@pytest.fixture(scope="module")
def bundle_and_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    bundle = export_clip(save_bare(tiny_open_clip(), root / "t.pt"), root / "t.rsvlm").path
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(root / "big.png")
    return bundle, root / "big.png"


@pytest.mark.campaign("images")
@pytest.mark.parametrize("limit,ok", [(1000, False), (119_999, False), (120_000, True), (10_000_000, True)])
def test_max_image_pixels_is_honoured_by_classify(bundle_and_image, limit, ok):
    bundle, image = bundle_and_image
    r = run_cli("--max-image-pixels", str(limit), "classify", str(bundle), str(image), "--labels", "a,b")
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        text = " ".join(r.stderr.split())
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "big.png" in text and f"{limit:,}" in text and "--max-image-pixels" in text


@pytest.mark.campaign("cli")
@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_bad_max_image_pixels_is_a_usage_error(value):
    r = run_cli("--max-image-pixels", value, "doctor")
    assert r.returncode == 2 and "error:" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
