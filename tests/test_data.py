"""HLBD files of both formats become pairs; the tokenizer keeps the tags whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlbd.data import BUNDLED, bundled_dataset, load_dataset, load_datasets, mix
from hlbd.tokenizer import TAGS, Tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HARDCORE = SHARED_DATA / "HLBD_Hardcore_Full.json"
FULL = SHARED_DATA / "HLBD_Full_V2.json"
needs_shared = pytest.mark.skipif(not FULL.exists(), reason="../shared/data not present")


@needs_shared
def test_real_files_of_both_formats_load_with_their_pair_counts():
    tagged, stats = load_datasets([str(HARDCORE), str(FULL)])
    assert stats == {"HLBD_Hardcore_Full.json": 575, "HLBD_Full_V2.json": 5000}
    assert len(tagged) == 5575
    hardcore = load_dataset(HARDCORE)
    assert len({(p.input, p.output) for p in hardcore}) == 501
    first = load_dataset(FULL)[0]
    assert first.input == "视频聊天"
    assert first.output.splitlines()[0] == "[EMOJI]视频聊天 📹"
    assert "[EN]Video chat" in first.output and "[KR]영상통화" in first.output


def test_mixing_is_reproducible_from_the_seed():
    pairs = load_dataset(BUNDLED)
    assert mix(pairs, 5) == mix(pairs, 5)
    assert mix(pairs, 5) != mix(pairs, 6)
    assert sorted(map(repr, mix(pairs, 5))) == sorted(map(repr, pairs))


def test_bundled_dataset_is_deterministic_hardcore_format():
    assert bundled_dataset() == bundled_dataset()
    data = bundled_dataset()["data"]
    assert set(data) == {"arithmetic", "geometry", "zodiac", "units"}
    sums = [item for item in data["arithmetic"] if "+" in item["input"]]
    for item in sums:
        a, b = item["input"].removesuffix(" = ?").split(" + ")
        assert int(item["output"]) == int(a) + int(b)


def test_tags_are_single_tokens_and_vocabulary_is_deterministic():
    texts = ["[EMOJI]📹[PHRASE]你好[EN]hi", "[PY]nǐ hǎo[JP]こんにちは[KR]안녕"]
    tok = Tokenizer.build(texts)
    assert tok.vocab == Tokenizer.build(reversed(texts)).vocab
    ids = tok.encode(texts[0])
    assert ids[0] == tok.vocab.index("[EMOJI]") and len(ids) == 1 + 1 + 1 + 2 + 1 + 2
    for tag in TAGS:
        assert len(tok.encode(tag)) == 1
    assert tok.decode(tok.encode(texts[1])) == texts[1]
    assert len(tok.encode("[EN")) == 3  # not a tag: three characters
    assert tok.encode("?") == [tok.unk_id]
