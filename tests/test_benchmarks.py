"""Smoke runs of the benchmarks with their smallest settings, so that they do not rot."""

import re

import pytest

from benchmarks import bench_blip_attention, bench_voting
from benchmarks.presets import TINY_OVERRIDES
from benchmarks.run import StandInCaptionNouns, random_spacy_pipeline, run
from fiftyone_ssa.models.engine.nouns import NounExtractor


def test_harness_runs_every_stage_but_sam_with_tiny_models(tmp_path):
    results = run(
        "tiny",
        device="cpu",
        images=1,
        stages=("decode", "semantic", "voting", "engine", "database"),
        cache=tmp_path / "models",
    )
    stages = [r.stage for r in results.rows]
    for expected in [
        "image decode (JPEG -> RGB)",
        "semantic branch (segformer-b0-ade20k)",
        "voting+painting: reference (per mask, RLE)",
        "voting+painting: ours from RLE (runs)",
        "SSA-engine: ours (batched)",
        "  ours: BLIP captioner",
        "SSA-engine: reference (per mask, bs 1)",
        "  reference: CLIPSeg decider",
        "write labels: FiftyOne autosave",
        "write labels: ours (SampleWriter)",
    ]:
        assert expected in stages
    engine = results.row("SSA-engine: ours (batched)")
    assert engine.masks == 3 and engine.seconds > 0 and engine.host_peak_mb > 0
    assert re.search(r"\d+\.\dx the reference", engine.note)
    agreement = next(n for n in results.notes if n.startswith("SSA-engine agreement"))
    caption, proposals = map(float, re.findall(r"(?:caption|proposals) (\d\.\d\d)", agreement))
    assert caption >= 0.5 and proposals >= 0.5  # the batched engine labels as the reference
    # Stand-in caption nouns (2 by default) give CLIPSeg the top-k's 3 prompts, as real captions.
    assert float(re.search(r"(\d\.\d\d) proposals", agreement)[1]) > 2.5
    markdown = results.markdown()
    assert "RANDOM weights" in markdown
    assert markdown.count("\n| ") == len(results.rows) + 2  # header, rule, one line per row


def test_stand_in_caption_nouns_fill_only_captions_without_nouns():
    nlp = random_spacy_pipeline()
    nouns = StandInCaptionNouns(nlp, ["wall", "sky", "tree", "road"], per_caption=2)
    found = NounExtractor(nlp).extract(["a red car on the road", "zzz qqq"])
    extracted = nouns.extract(["a red car on the road", "zzz qqq"])
    for phrases, stand_ins in zip(found, extracted):
        assert stand_ins == (phrases or stand_ins)
        assert len(stand_ins) == (len(phrases) or 2)
    assert nouns.extract(["zzz qqq"]) == nouns.extract(["zzz qqq"])
    assert StandInCaptionNouns(nlp, ["wall"], per_caption=0).extract(["zzz qqq"]) == found[1:]


def test_voting_benchmark_runs(capsys):
    bench_voting.main(["--device", "cpu", "--images", "1", "--masks", "6", "--height", "60"])
    out = capsys.readouterr().out
    assert "ours from RLE, run space" in out
    assert "pixels equal to the reference" in out


def test_write_benchmark_runs(capsys):
    from benchmarks import bench_write

    bench_write.main(["--images", "2", "--masks", "3", "--height", "40", "--width", "60"])
    out = capsys.readouterr().out
    assert "per-sample save" in out and re.search(r"\d+\.\dx the per-sample save", out)


@pytest.mark.parametrize(
    "family, module",
    [("sam", "segment-anything MaskDecoder"), ("sam2", "transformers Sam2MaskDecoder")],
)
def test_decoder_benchmark_runs_and_filters(family, module):
    from benchmarks import bench_decoder

    results = bench_decoder.run(family, "cpu", prompts=8, batch=4, pass_fraction=0.5)
    masks = {row.stage: row.masks for row in results.rows}
    assert len(masks) == 4
    assert masks[f"fp32, filter off: {module}"] == 24
    assert masks["fp32, filter off: ours (PromptBatchDecoder)"] == 24
    filtered = masks[f"fp32, ~50% pass: {module}"]
    assert 0 < filtered < 24
    assert masks["fp32, ~50% pass: ours (PromptBatchDecoder)"] == filtered
    assert re.search(rf"\d+\.\dx {module}", results.rows[-1].note)


def test_blip_attention_benchmark_runs():
    results = bench_blip_attention.run(
        device="cpu", crops=2, repeats=1, overrides=TINY_OVERRIDES["blip"]
    )
    assert [r.stage for r in results.rows] == ["eager attention, run 1", "sdpa attention, run 1"]
    assert re.search(r"SDPA \d+\.\d\dx eager .* difference \d\.\d\de-\d\d", results.notes[0])


def test_decider_benchmark_runs(tmp_path):
    from benchmarks import bench_deciders

    results = bench_deciders.run(
        size=(40, 56), n_masks=3, top_k=2, n_names=4, device="cpu", cache=tmp_path, tiny=True
    )
    assert [r.stage for r in results.rows] == ["CLIPSeg rd64-refined, run 1", "SAM 3, run 1"]
    assert re.search(r"SAM 3 \(Sam3Decider.*\d+\.\d\dx CLIPSeg's time", results.notes[1])
    with pytest.raises(ValueError, match="top_k"):
        bench_deciders.decider_inputs((40, 56), 3, top_k=5, n_names=4)
