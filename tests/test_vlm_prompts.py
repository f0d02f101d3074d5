"""Chat templates, LLaVA-style image tokenisation, GeoChat task prefixes and box parsing."""

from __future__ import annotations

import pytest

from rsvlm_edge.errors import InputError
from rsvlm_edge.models.llava.prompts import (
    build_prompt,
    geochat_question,
    parse_geochat_boxes,
    tokenize_with_image,
)


def test_llava_v1_template_is_llavas_conversation():
    assert build_prompt("llava_v1", "What is this?") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is this? ASSISTANT:"
    )
    assert build_prompt("vicuna_v1", "Hi").startswith("A chat between a curious user and")
    assert build_prompt("vicuna_v1", "Hi", with_image=False).endswith("USER: Hi ASSISTANT:")


def test_llama_2_template():
    p = build_prompt("llama_2", "Count the planes.")
    assert p.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant.")
    assert p.endswith("\n<</SYS>>\n\n<image>\nCount the planes. [/INST]")


def test_bad_template_or_question_is_refused():
    with pytest.raises(InputError, match="unknown chat template 'chatml'"):
        build_prompt("chatml", "x")
    with pytest.raises(InputError, match="<image>"):
        build_prompt("llava_v1", "look at <image> please")


def test_tokenize_with_image_mirrors_llava_chunking():
    from llava_fixtures import make_tokenizer

    tok = make_tokenizer(316)
    prompt = build_prompt("llava_v1", "How many ships?")
    chunks = tokenize_with_image(tok, prompt, bos_token_id=1)
    before, after = prompt.split("<image>")
    assert len(chunks) == 2
    assert chunks[0] == tok.encode(before).ids and chunks[0][0] == 1  # BOS once, at the start
    assert chunks[1] == tok.encode(after).ids[1:] and 1 not in chunks[1]
    assert tok.decode(chunks[0] + chunks[1], skip_special_tokens=True) == before + after
    assert tokenize_with_image(tok, "no image here", 1) == [tok.encode("no image here").ids]


def test_geochat_task_prefixes():
    assert geochat_question("grounding", "Describe the image.") == "[grounding] Describe the image."
    assert geochat_question("refer", "the ship on the left") == "[refer] the ship on the left"
    assert geochat_question("identify", "{<1><2><3><4>|<0>}") == "[identify] {<1><2><3><4>|<0>}"
    assert geochat_question(None, "plain") == "plain"
    with pytest.raises(InputError, match="unknown GeoChat task"):
        geochat_question("segment", "x")


def test_geochat_boxes_to_pixels():
    text = "There are two planes {<10><20><30><40>|<45>} and {<50><0><100><100>|<-30>}, and {<5><5><6><6>}."
    boxes = parse_geochat_boxes(text, width=200, height=100)
    assert [(b.x1, b.y1, b.x2, b.y2, b.angle) for b in boxes] == [
        (20.0, 20.0, 60.0, 40.0, 45.0),
        (100.0, 0.0, 200.0, 100.0, -30.0),
        (10.0, 5.0, 12.0, 6.0, 0.0),
    ]
    assert parse_geochat_boxes("no boxes", 10, 10) == []


def test_geochat_boxes_on_a_padded_image_remove_the_padding():
    # A 200x100 image padded to 200x200: 50 px of padding above; 0-100 spans the 200 px square.
    (box,) = parse_geochat_boxes("{<0><25><50><75>|<90>}", width=200, height=100, padded=True)
    assert (box.x1, box.y1, box.x2, box.y2, box.angle) == (0.0, 0.0, 100.0, 100.0, 90.0)
    with pytest.raises(InputError):
        parse_geochat_boxes("{<0><0><1><1>}", 0, 10)
