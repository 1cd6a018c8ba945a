"""evaluate_miou / compare_miou / ``fiftyone-ssa eval`` on real FiftyOne datasets."""

import sys
import warnings

import fiftyone as fo
import fiftyone.core.fields as fof
import numpy as np
import pytest
import sklearn.metrics as skm
from PIL import Image

from fiftyone_ssa.cli import main
from fiftyone_ssa.evaluation.compare import compare_miou, plot_per_class_iou
from fiftyone_ssa.evaluation.miou import MIoUResults, evaluate_miou
from fiftyone_ssa.evaluation.report import format_comparison_table
from fiftyone_ssa.fields import evaluation_keys

IGNORE = 255
SHAPE = (12, 16)


def write_image(tmp_path, index, shape=SHAPE):
    path = tmp_path / f"image_{index}.png"
    Image.fromarray(np.zeros((*shape, 3), dtype=np.uint8)).save(path)
    return str(path)


def random_masks(rng, gt_values, pred_values, count, shape=SHAPE, ignore_fraction=0.15):
    """[(gt, pred)] uint8 masks; predictions copy the ground truth on some pixels."""
    pairs = []
    for _ in range(count):
        gt = rng.choice(gt_values, size=shape).astype(np.uint8)
        pred = rng.choice(pred_values, size=shape).astype(np.uint8)
        gt[rng.random(shape) < ignore_fraction] = IGNORE
        pairs.append((gt, pred))
    return pairs


def build_dataset(make_dataset, tmp_path, pairs, pred_field="pred", extra=None):
    dataset = make_dataset()
    samples = []
    for i, (gt, pred) in enumerate(pairs):
        sample = fo.Sample(filepath=write_image(tmp_path, i, gt.shape))
        sample["gt"] = fo.Segmentation(mask=gt)
        sample[pred_field] = fo.Segmentation(mask=pred)
        for field, masks in (extra or {}).items():
            sample[field] = fo.Segmentation(mask=masks[i])
        samples.append(sample)
    dataset.add_samples(samples)
    return dataset


def names_of(mask, targets):
    return np.array([targets.get(int(v), str(int(v))) for v in mask.ravel()], dtype=object)


def reference(pairs, gt_targets, pred_targets, classes, ignore_index=IGNORE):
    """sklearn's confusion matrix over per-pixel class NAMES, and mIoU by per-class loops."""
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    gt_all, pred_all = [], []
    for gt, pred in pairs:
        valid = gt.ravel() != ignore_index
        gt_names = names_of(gt, gt_targets)[valid]
        pred_names = names_of(pred, pred_targets)[valid]
        if gt_names.size:
            matrix += skm.confusion_matrix(gt_names, pred_names, labels=classes)
        gt_all.append(gt_names)
        pred_all.append(pred_names)
    gt_all, pred_all = np.concatenate(gt_all), np.concatenate(pred_all)
    ious = []
    for name in classes:
        union = np.sum((gt_all == name) | (pred_all == name))
        ious.append(np.sum((gt_all == name) & (pred_all == name)) / union if union else np.nan)
    aacc = np.mean(gt_all == pred_all) if gt_all.size else np.nan
    return matrix, np.array(ious), np.nanmean(ious) if not np.all(np.isnan(ious)) else np.nan, aacc


def test_same_ids_match_fiftyone_pixel_confusion_matrix(make_dataset, tmp_path):
    rng = np.random.default_rng(0)
    # Class 3 is never in the ground truth, class 4 never predicted.
    pairs = random_masks(rng, [0, 1, 2, 4], [0, 1, 2, 3], count=5)
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    results = evaluate_miou(dataset, "pred", "gt", progress=False)
    assert isinstance(results, MIoUResults)
    assert list(results.classes) == ["0", "1", "2", "3", "4"]

    # FiftyOne's own evaluation: mask targets without 255 drop the ignored pixels.
    fo_results = dataset.evaluate_segmentations(
        "pred", gt_field="gt", mask_targets={v: str(v) for v in range(5)}, progress=False
    )
    np.testing.assert_array_equal(results.pixel_confusion_matrix, fo_results.pixel_confusion_matrix)

    matrix = fo_results.pixel_confusion_matrix.astype(float)
    inter = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - inter
    iou = inter / union
    np.testing.assert_allclose(results.iou, iou, rtol=0, atol=1e-9)
    assert iou[3] == 0 and iou[4] == 0
    assert results.miou == pytest.approx(np.nanmean(iou), abs=1e-9)
    assert results.aacc == pytest.approx(inter.sum() / matrix.sum(), abs=1e-9)
    acc = results.per_class_accuracy
    assert np.isnan(acc["3"]) and acc["4"] == 0


def test_different_ids_matched_by_name(make_dataset, tmp_path):
    gt_targets = {0: "background", 1: "cat", 2: "dog", 3: "bird", 6: "tree"}
    pred_targets = {0: "background", 4: "dog", 7: "cat", 9: "fish", 11: "tree"}
    rng = np.random.default_rng(1)
    # gt 5 and pred 12 have no name; "tree" is declared on both sides but never appears.
    pairs = random_masks(rng, [0, 1, 2, 3, 5], [0, 4, 7, 9, 12], count=6)
    for gt, pred in pairs:  # predict the right NAME on 60% of the pixels
        same = (rng.random(gt.shape) < 0.6) & np.isin(gt, [0, 1, 2])
        pred[same] = np.array([0, 7, 4])[gt[same]]
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    dataset.mask_targets = {"gt": gt_targets, "pred": pred_targets}
    dataset.save()
    results = evaluate_miou(dataset, "pred", "gt", progress=False)

    classes = ["background", "cat", "dog", "bird", "tree", "fish", "5", "12"]
    assert list(results.classes) == classes
    assert results.unmatched_gt_classes == ["bird"]
    assert results.unmatched_pred_classes == ["fish"]
    assert results.unnamed_gt_values == [5] and results.unnamed_pred_values == [12]
    matrix, iou, miou, aacc = reference(pairs, gt_targets, pred_targets, classes)
    np.testing.assert_array_equal(results.pixel_confusion_matrix, matrix)
    np.testing.assert_allclose(results.iou, iou, rtol=0, atol=1e-9)
    assert np.isnan(results.per_class_iou["tree"])
    assert results.miou == pytest.approx(miou, abs=1e-9)
    assert results.aacc == pytest.approx(aacc, abs=1e-9)
    assert results.per_class_iou["cat"] > 0.4  # names matched (cat is 1 in gt, 7 in pred)

    # Mask targets on the ground truth only: both fields are read with them.
    dataset.mask_targets = {"gt": gt_targets}
    dataset.save()
    shared = evaluate_miou(dataset, "pred", "gt", progress=False)
    _, _, miou_shared, _ = reference(pairs, gt_targets, gt_targets, list(shared.classes))
    assert shared.miou == pytest.approx(miou_shared, abs=1e-9)
    assert shared.unmatched_gt_classes == [] and shared.unnamed_pred_values == [4, 7, 9, 12]


def test_reduce_zero_label(make_dataset, tmp_path):
    rng = np.random.default_rng(2)
    pairs = random_masks(rng, [0, 1, 2, 3], [0, 1, 2], count=4)
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    # No targets: after the shift, ground truth k+1 is compared with predicted id k.
    results = evaluate_miou(dataset, "pred", "gt", reduce_zero_label=True, progress=False)
    shifted = [(np.where((g == 0) | (g == IGNORE), IGNORE, g - 1), p) for g, p in pairs]
    matrix, iou, miou, _ = reference(shifted, {}, {}, ["0", "1", "2"])
    np.testing.assert_array_equal(results.pixel_confusion_matrix, matrix)
    assert results.miou == pytest.approx(miou, abs=1e-9)

    # Raw ADE-style targets on the ground truth name the raw values; the names still match.
    dataset.mask_targets = {
        "gt": {0: "other", 1: "wall", 2: "floor", 3: "sky"},
        "pred": {0: "wall", 1: "floor", 2: "sky"},
    }
    dataset.save()
    named = evaluate_miou(dataset, "pred", "gt", reduce_zero_label=True, progress=False)
    assert list(named.classes) == ["wall", "floor", "sky"]
    np.testing.assert_array_equal(named.pixel_confusion_matrix, matrix)
    assert named.unmatched_gt_classes == []


def test_per_sample_fields_and_sorting(make_dataset, tmp_path):
    rng = np.random.default_rng(3)
    pairs = random_masks(rng, [0, 1, 2, 3], [0, 1, 2, 3], count=6)
    for k, (gt, pred) in enumerate(pairs):  # vary the quality from sample to sample
        keep = rng.random(gt.shape) < k / 6
        pred[keep] = np.where(gt[keep] == IGNORE, 0, gt[keep])
    pairs[2][0][:] = IGNORE  # a sample with no valid pixel
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)

    schema = dataset.get_field_schema()
    assert isinstance(schema["ev_miou"], fof.FloatField) and isinstance(
        schema["ev_aacc"], fof.FloatField
    )
    expected = []
    for gt, pred in pairs:
        _, _, miou, aacc = reference([(gt, pred)], {}, {}, ["0", "1", "2", "3"])
        expected.append((miou, aacc))
    got_miou = dataset.values("ev_miou")
    got_aacc = dataset.values("ev_aacc")
    assert got_miou[2] is None and got_aacc[2] is None
    for k, (miou, aacc) in enumerate(expected):
        if k != 2:
            assert got_miou[k] == pytest.approx(miou, abs=1e-9)
            assert got_aacc[k] == pytest.approx(aacc, abs=1e-9)

    ids = dataset.values("id")
    worst_first = dataset.exists("ev_miou").sort_by("ev_miou").values("id")
    order = sorted((k for k in range(6) if k != 2), key=lambda k: expected[k][0])
    assert worst_first == [ids[k] for k in order]
    best_first = dataset.exists("ev_miou").sort_by("ev_miou", reverse=True).values("id")
    assert best_first == worst_first[::-1]


def test_evaluation_run_round_trip(make_dataset, tmp_path):
    rng = np.random.default_rng(4)
    pairs = random_masks(rng, [0, 1, 2], [0, 1, 2, 5], count=3)
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    dataset.mask_targets = {
        "gt": {0: "a", 1: "b", 2: "c"},
        "pred": {0: "a", 1: "b", 2: "c", 5: "d"},
    }
    dataset.save()
    results = evaluate_miou(
        dataset, "pred", "gt", eval_key="ev", ignore_index=IGNORE, progress=False
    )

    assert dataset.list_evaluations() == ["ev"]
    info = dataset.get_evaluation_info("ev")
    assert info.config.method == "miou" and info.config.type == "segmentation"
    assert info.config.ignore_index == IGNORE and info.config.reduce_zero_label is False
    assert dataset.get_evaluation_info("ev").config.pred_field == "pred"

    loaded = fo.load_dataset(dataset.name).load_evaluation_results("ev", cache=False)
    assert loaded is not results and isinstance(loaded, MIoUResults)
    assert loaded.miou == pytest.approx(results.miou, abs=1e-12)
    assert loaded.aacc == pytest.approx(results.aacc, abs=1e-12)
    np.testing.assert_array_equal(loaded.pixel_confusion_matrix, results.pixel_confusion_matrix)
    assert list(loaded.classes) == list(results.classes) == ["a", "b", "c", "d"]
    assert loaded.unmatched_pred_classes == ["d"]
    # What FiftyOne's Model Evaluation panel reads.
    report = loaded.report()
    assert set(report["b"]) >= {"iou", "precision", "recall", "f1-score", "support"}
    assert report["mIoU"] == pytest.approx(results.miou)
    assert loaded.metrics()["miou"] == pytest.approx(results.miou)
    loaded._confusion_matrix(include_other=False, include_missing=True, tabulate_ids=False)

    dataset.rename_evaluation("ev", "renamed")
    assert dataset.list_evaluations() == ["renamed"]
    schema = dataset.get_field_schema()
    assert "renamed_miou" in schema and "ev_miou" not in schema
    assert dataset.load_evaluation_results("renamed", cache=False).miou == pytest.approx(
        results.miou
    )

    dataset.delete_evaluation("renamed")
    assert dataset.list_evaluations() == []
    schema = dataset.get_field_schema()
    assert "renamed_miou" not in schema and "renamed_aacc" not in schema


def test_stored_run_carries_miou_and_per_class_iou_for_the_model_evaluation_panel(
    make_dataset, tmp_path
):
    """The panel lists ``results.custom_metrics`` (it was None): mIoU, mAcc, aAcc, IoU per class."""
    rng = np.random.default_rng(5)
    pairs = random_masks(rng, [0, 1, 2], [0, 1, 2], count=3)
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    # Names a lodash path would split ("." and "[]"), two that read alike, one never seen.
    targets = {0: "road", 1: "traffic.light", 2: "traffic light", 3: "sky[1]"}
    dataset.mask_targets = {"gt": targets, "pred": targets}
    dataset.save()
    results = evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)

    stored = fo.load_dataset(dataset.name).load_evaluation_results("ev", cache=False)
    for entries in (results.serialize()["custom_metrics"], stored.custom_metrics):
        assert list(entries) == [
            "@fiftyone-ssa/ssa/miou",
            "@fiftyone-ssa/ssa/macc",
            "@fiftyone-ssa/ssa/aacc",
            "@fiftyone-ssa/ssa/iou/road",
            "@fiftyone-ssa/ssa/iou/traffic_light",
            "@fiftyone-ssa/ssa/iou/traffic_light_2",
            "@fiftyone-ssa/ssa/iou/sky_1_",
        ]
        assert entries["@fiftyone-ssa/ssa/miou"] == {
            "key": "miou",
            "value": pytest.approx(results.miou),
            "label": "mIoU",
            "lower_is_better": False,
        }
        assert entries["@fiftyone-ssa/ssa/aacc"]["value"] == pytest.approx(results.aacc)
        shown = {e["label"]: e["value"] for e in list(entries.values())[3:]}
        assert shown == {
            "IoU road": pytest.approx(results.per_class_iou["road"]),
            "IoU traffic.light": pytest.approx(results.per_class_iou["traffic.light"]),
            "IoU traffic light": pytest.approx(results.per_class_iou["traffic light"]),
            "IoU sky[1]": None,  # in neither field: NaN, which the panel hides
        }
    assert np.isnan(results.per_class_iou["sky[1]"])
    metrics = stored.metrics()
    assert metrics["miou"] == pytest.approx(results.miou)
    assert metrics["iou_traffic_light_2"] == pytest.approx(results.per_class_iou["traffic light"])
    # metrics added later (FiftyOne's add_custom_metrics) keep ours
    stored.custom_metrics["other"] = {"key": "other", "value": 1.0, "label": "Other"}
    stored.save()
    again = fo.load_dataset(dataset.name).load_evaluation_results("ev", cache=False)
    assert "other" in again.custom_metrics and "@fiftyone-ssa/ssa/miou" in again.custom_metrics


def test_mask_path_resize_and_skipped_samples(make_dataset, tmp_path):
    rng = np.random.default_rng(5)
    pairs = random_masks(rng, [0, 1, 2], [0, 1, 2], count=4, shape=(12, 16))
    dataset = make_dataset()
    for i, (gt, pred) in enumerate(pairs):
        gt_path = tmp_path / f"gt_{i}.png"
        Image.fromarray(gt).save(gt_path)
        small = pred[::2, ::2]  # half size: the 2x nearest upsampling is np.repeat
        pairs[i] = (gt, small.repeat(2, axis=0).repeat(2, axis=1))
        sample = fo.Sample(filepath=write_image(tmp_path, i))
        sample["gt"] = fo.Segmentation(mask_path=str(gt_path))
        sample["pred"] = fo.Segmentation(mask=small)
        dataset.add_sample(sample)
    dataset.add_sample(
        fo.Sample(filepath=write_image(tmp_path, 9), gt=fo.Segmentation(mask=pairs[0][0]))
    )

    with pytest.warns(UserWarning) as caught:
        results = evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "Resized" in messages and "nearest" in messages and "Skipped 1" in messages
    assert results.num_resized == 4 and results.num_skipped == 1
    matrix, _, miou, _ = reference(pairs, {}, {}, ["0", "1", "2"])
    np.testing.assert_array_equal(results.pixel_confusion_matrix, matrix)
    assert results.miou == pytest.approx(miou, abs=1e-9)
    assert dataset.values("ev_miou")[-1] is None


def test_a_missing_mask_file_skips_its_sample(make_dataset, tmp_path):
    pairs = random_masks(np.random.default_rng(8), [0, 1, 2], [0, 1, 2], count=3)
    dataset = make_dataset()
    for i, (gt, pred) in enumerate(pairs):
        Image.fromarray(gt).save(tmp_path / f"gt_{i}.png")
        dataset.add_sample(
            fo.Sample(
                filepath=write_image(tmp_path, i, gt.shape),
                gt=fo.Segmentation(mask_path=str(tmp_path / f"gt_{i}.png")),
                pred=fo.Segmentation(mask=pred),
            )
        )
    (tmp_path / "gt_1.png").unlink()
    with pytest.warns(UserWarning, match="Skipped 1 sample"):
        results = evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)
    assert results.num_skipped == 1
    matrix, _, miou, _ = reference([pairs[0], pairs[2]], {}, {}, ["0", "1", "2"])
    np.testing.assert_array_equal(results.pixel_confusion_matrix, matrix)
    assert results.miou == pytest.approx(miou, abs=1e-9)
    assert dataset.values("ev_miou")[1] is None


def test_rgb_masks_and_bad_arguments_raise(make_dataset, tmp_path):
    dataset = make_dataset()
    rgb = np.zeros((*SHAPE, 3), dtype=np.uint8)
    dataset.add_sample(
        fo.Sample(
            filepath=write_image(tmp_path, 0),
            gt=fo.Segmentation(mask=np.zeros(SHAPE, dtype=np.uint8)),
            pred=fo.Segmentation(mask=rgb),
        )
    )
    with pytest.raises(ValueError, match="RGB"):
        evaluate_miou(dataset, "pred", "gt", progress=False)
    with pytest.raises(ValueError, match="ignore_index"):
        evaluate_miou(dataset, "pred", "gt", ignore_index="255")
    with pytest.raises(ValueError):
        evaluate_miou(dataset, "missing_field", "gt")
    dataset.mask_targets = {"gt": {"#ff0000": "red"}}
    dataset.save()
    with pytest.raises(ValueError, match="RGB"):
        evaluate_miou(dataset, "gt", "gt", progress=False)


def test_compare_table_and_plot(make_dataset, tmp_path):
    rng = np.random.default_rng(6)
    pairs = random_masks(rng, [0, 1, 2], [0, 1, 2], count=4)
    better = [np.where(g == IGNORE, 0, g).astype(np.uint8) for g, _ in pairs]
    better[0][0, :5] = 1
    dataset = build_dataset(make_dataset, tmp_path, pairs, extra={"ssa": better})
    with pytest.raises(ValueError, match="distinct"):
        compare_miou(dataset, ["pred", "pred"], "gt")
    results = compare_miou(dataset, ["pred", "ssa"], "gt", eval_key="cmp", progress=False)
    assert list(results) == ["pred", "ssa"]
    assert sorted(dataset.list_evaluations()) == ["cmp_pred", "cmp_ssa"]
    assert evaluation_keys("k", ["a"]) == {"a": "k"}

    table = format_comparison_table(results)
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    first, second = results["pred"], results["ssa"]
    assert rows["mIoU"][1:] == [
        f"{100 * first.miou:.2f}",
        f"{100 * second.miou:.2f}",
        f"{100 * (second.miou - first.miou):+.2f}",
    ]
    assert rows["aAcc"][2] == f"{100 * second.aacc:.2f}"
    for name in ["0", "1", "2"]:
        diff = second.per_class_iou[name] - first.per_class_iou[name]
        assert rows[name][3] == f"{100 * diff:+.2f}"

    path = plot_per_class_iou(results, tmp_path / "plots" / "iou.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(make_dataset, tmp_path, monkeypatch):
    pairs = random_masks(np.random.default_rng(8), [0, 1], [0, 1], count=1)
    results = compare_miou(
        build_dataset(make_dataset, tmp_path, pairs), ["pred"], "gt", progress=False
    )
    modules = ["matplotlib", "matplotlib.backend_bases", "matplotlib.figure"]
    for module in [*modules, "matplotlib.backends.backend_agg"]:
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ImportError, match=r"`plot` extra"):
        plot_per_class_iou(results, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_eval_prints_table_and_writes_plot(make_dataset, tmp_path, capsys):
    rng = np.random.default_rng(7)
    pairs = random_masks(rng, [0, 1, 2], [0, 1, 2], count=3)
    dataset = build_dataset(
        make_dataset, tmp_path, pairs, pred_field="ssa_branch", extra={"ssa": [g for g, _ in pairs]}
    )
    dataset.mask_targets = {"gt": {0: "road", 1: "car", 2: "sky"}}
    dataset.save()
    plot = tmp_path / "cli.png"
    argv = [
        "eval",
        dataset.name,
        "--gt",
        "gt",
        "--pred",
        "ssa",
        "--pred",
        "ssa_branch",
        "--eval-key",
        "cli",
        "--plot",
        str(plot),
    ]
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("ignore")
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    expected = compare_miou(dataset, ["ssa", "ssa_branch"], "gt", progress=False)
    header = next(
        line for line in out.splitlines() if line.split()[:3] == ["ssa", "ssa_branch", "diff"]
    )
    assert header
    miou_row = next(line.split() for line in out.splitlines() if line.startswith("mIoU "))
    assert miou_row[1:] == [
        "100.00",
        f"{100 * expected['ssa_branch'].miou:.2f}",
        f"{100 * (expected['ssa_branch'].miou - 1):+.2f}",
    ]
    for name in ["road", "car", "sky"]:
        assert any(line.split()[:2] == [name, "100.00"] for line in out.splitlines())
    assert sorted(dataset.list_evaluations()) == ["cli_ssa", "cli_ssa_branch"]
    assert plot.read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "no-such-dataset-xyz", "--gt", "gt", "--pred", "ssa"])
    assert exit_info.value.code == 1
    assert "no-such-dataset-xyz" in capsys.readouterr().err


def test_failed_evaluation_leaves_no_saved_run(make_dataset, tmp_path):
    rng = np.random.default_rng(5)
    pairs = random_masks(rng, [0, 1], [0, 1], count=3)
    dataset = build_dataset(make_dataset, tmp_path, pairs)
    last = dataset.last()
    last["pred"] = fo.Segmentation(mask=last["pred"].mask.astype(np.float32))
    last.save()
    with pytest.raises(ValueError, match="integer ids"):
        evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)
    assert "ev" not in dataset.list_evaluations()
    assert "ev_miou" not in dataset.get_field_schema()

    # a field of the user's own under the run's field names is never touched
    dataset.add_sample_field("mine_miou", fof.StringField)
    dataset.set_values("mine_miou", ["keep"] * 3)
    with pytest.raises(ValueError, match="'mine_miou' already exists"):
        evaluate_miou(dataset, "gt", "gt", eval_key="mine", progress=False)
    assert dataset.values("mine_miou") == ["keep"] * 3 and not dataset.list_evaluations()


def test_failed_re_evaluation_keeps_the_old_run(make_dataset, tmp_path, capsys):
    rng = np.random.default_rng(6)
    pairs = random_masks(rng, [0, 1, 2], [0, 1, 2], count=3)
    dataset = build_dataset(make_dataset, tmp_path, pairs, extra={"other": [p for _, p in pairs]})
    old = evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)
    old_values = dataset.values("ev_miou")
    schema = sorted(dataset.get_field_schema())

    # a mask that fails only when its sample is read, after every check has passed
    last = dataset.last()
    last["pred"] = fo.Segmentation(mask=last["pred"].mask.astype(np.float32))
    last.save()
    with pytest.raises(ValueError, match="integer ids"):
        evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", dataset.name, "--gt", "gt", "--pred", "pred", "--eval-key", "ev"])
    assert exit_info.value.code == 1 and "integer ids" in capsys.readouterr().err
    # FiftyOne's rule: a run of other fields is replaced only with overwrite
    with pytest.raises(ValueError, match="pred_field=pred"):
        evaluate_miou(dataset, "other", "gt", eval_key="ev", progress=False)

    assert dataset.list_evaluations() == ["ev"]
    assert sorted(dataset.get_field_schema()) == schema
    assert dataset.values("ev_miou") == old_values
    assert dataset.load_evaluation_results("ev").miou == pytest.approx(old.miou)
    assert dataset.get_evaluation_info("ev").config.pred_field == "pred"

    # a successful re-evaluation replaces it under the same key
    new = evaluate_miou(dataset, "other", "gt", eval_key="ev", progress=False, overwrite=True)
    assert new.key == "ev" and dataset.list_evaluations() == ["ev"]
    assert sorted(dataset.get_field_schema()) == schema
    assert dataset.get_evaluation_info("ev").config.pred_field == "other"
    assert dataset.load_evaluation_results("ev").miou == pytest.approx(new.miou)
    assert dataset.values("ev_miou") == pytest.approx(old_values)  # "other" == old "pred"


def test_nothing_to_evaluate_raises_before_saving(make_dataset, tmp_path):
    pairs = random_masks(np.random.default_rng(9), [0, 1], [0, 1], count=2)
    dataset = build_dataset(make_dataset, tmp_path, pairs, extra={"empty": [p for _, p in pairs]})
    with pytest.raises(ValueError, match="the collection is empty"):
        evaluate_miou(dataset.limit(0), "pred", "gt", eval_key="ev", progress=False)
    dataset.set_values("empty", [None, None])
    with pytest.raises(ValueError, match="'empty' against 'gt': no sample has both labels"):
        evaluate_miou(dataset, "empty", "gt", eval_key="ev", progress=False)
    # Several fields: checked before the first one's run is saved
    with pytest.raises(ValueError, match="no sample has both labels"):
        compare_miou(dataset, ["pred", "empty"], "gt", eval_key="ev", progress=False)
    assert not dataset.list_evaluations() and "ev_pred_miou" not in dataset.get_field_schema()
    with pytest.raises(ValueError, match="'pred' exists on the dataset but this view excludes"):
        compare_miou(dataset.exclude_fields("pred"), ["pred"], "gt", progress=False)


def test_plot_refuses_a_format_matplotlib_cannot_write(make_dataset, tmp_path):
    pairs = random_masks(np.random.default_rng(10), [0, 1], [0, 1], count=1)
    results = compare_miou(
        build_dataset(make_dataset, tmp_path, pairs), ["pred"], "gt", progress=False
    )
    with pytest.raises(ValueError, match=r"'.*chart\.txt'"):
        plot_per_class_iou(results, tmp_path / "chart.txt")
    assert not (tmp_path / "chart.txt").exists()
    assert plot_per_class_iou(results, tmp_path / "chart.svg").endswith("chart.svg")


def test_predicted_ignore_index_is_a_miss_not_a_class(make_dataset, tmp_path):
    # A prediction that leaves pixels unlabelled (255) misses them, as in mmsegmentation: the
    # ground-truth class loses them, but 255 is no class of its own dragging mIoU down.
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, IGNORE, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)
    for targets in (None, {0: "a", 1: "b"}):
        dataset = build_dataset(make_dataset, tmp_path, [(gt, pred)])
        if targets:
            dataset.mask_targets = {"gt": targets, "pred": targets}
            dataset.save()
        results = evaluate_miou(dataset, "pred", "gt", eval_key="ev", progress=False)
        iou = list(results.per_class_iou.values())
        assert iou[:2] == [0.75, 1.0] and np.isnan(iou[2])
        assert results.miou == pytest.approx(0.875) and results.aacc == pytest.approx(7 / 8)
        assert dataset.first()["ev_miou"] == pytest.approx(0.875)
        loaded = dataset.load_evaluation_results("ev", cache=False)
        assert loaded.miou == pytest.approx(0.875) and loaded.unscored_classes == ["255"]
    # A ground truth that has the class the prediction's 255 names keeps it scored.
    dataset = build_dataset(make_dataset, tmp_path, [(gt, pred)])
    dataset.mask_targets = {"gt": {0: "a", 1: "b", 2: "c"}, "pred": {0: "a", 1: "b", 255: "c"}}
    dataset.save()
    results = evaluate_miou(dataset, "pred", "gt", progress=False)
    assert results.per_class_iou["c"] == 0 and results.miou == pytest.approx(1.75 / 3)
