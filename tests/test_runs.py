"""Run keys, shards and the output-field checks of the run loop."""

import fiftyone as fo
import pytest
from fiftyone import ViewField as F
from hypothesis import given
from hypothesis import strategies as st

from fiftyone_ssa.labelling import record
from fiftyone_ssa.labelling.distributed import split_evenly


@given(st.integers(0, 60), st.integers(1, 9))
def test_split_evenly_is_disjoint_contiguous_and_balanced(n, parts):
    ids = list(range(0, 3 * n, 3))
    ranges = split_evenly(ids, parts)
    assert len(ranges) == parts
    covered = []
    for bounds in ranges:
        if bounds is not None:
            covered.append([i for i in ids if bounds[0] <= i <= bounds[1]])
    assert sum(covered, []) == ids  # every id once, in order
    sizes = [len(c) for c in covered] + [0] * ranges.count(None)
    assert max(sizes) - min(sizes) <= 1


def test_split_evenly_rejects_no_parts():
    with pytest.raises(ValueError, match="parts"):
        split_evenly([1, 2], 0)


def test_run_key_depends_on_labelling_settings_only():
    base = {"label_field": "ssa", "semantic_branch": "field:coarse", "top_k": 3}
    assert record.make_run_key(base) == record.make_run_key(dict(reversed(base.items())))
    assert record.make_run_key(base) != record.make_run_key({**base, "top_k": 2})
    assert len(record.make_run_key(base)) == 12

    def branch(image):
        return image

    named = record.make_run_key({**base, "semantic_branch": branch})
    assert named == record.make_run_key({**base, "semantic_branch": branch})
    assert record.spec_name(branch).endswith("branch")


@pytest.mark.parametrize("name", ["", "a.b", "_private", "../x", "a/b", "1st", None])
def test_bad_label_field_names_are_refused(make_dataset, name):
    ds = make_dataset()
    ds.add_sample(fo.Sample(filepath="/tmp/none.png"))
    with pytest.raises(ValueError, match="label_field"):
        record.check_target(ds, name)


def test_empty_view_is_refused(make_dataset):
    with pytest.raises(ValueError, match="empty"):
        record.check_target(make_dataset(), "ssa")


def test_existing_field_of_another_type_is_refused_even_with_overwrite(make_dataset):
    ds = make_dataset()
    ds.add_sample(fo.Sample(filepath="/tmp/none.png", ssa=fo.Classification(label="x")))
    with pytest.raises(ValueError, match="holds Classification, not Segmentation"):
        record.check_outputs_free(ds, "ssa", {"ssa": fo.Segmentation}, "k", True, False)


def test_ranks_exchange_counts_and_failures_only():
    from fiftyone_ssa.labelling.record import SampleSummary, SSARunSummary

    def summary(ok, failed, skipped):
        entries = [SampleSummary(f"id{i}", f"/x/{i}.png", 2, ["a"]) for i in range(ok)]
        entries += [SampleSummary(f"bad{i}", f"/x/bad{i}.png", error="E") for i in range(failed)]
        return SSARunSummary("ssa", entries, skipped, "k")

    first, second = summary(3, 1, 5), summary(4, 2, 5)
    compact = first.compact()
    assert [s.sample_id for s in compact.samples] == ["bad0"]
    assert (compact.num_labelled, len(compact.failures), compact.skipped_existing) == (3, 1, 5)
    merged = compact.merge([second.compact()])
    assert (merged.num_labelled, len(merged.failures), merged.skipped_existing) == (7, 3, 5)
    assert str(merged).startswith("7 samples labelled into 'ssa', 3 failed, 5 skipped")
    # A single process keeps every sample's entry.
    assert first.merge([]).samples == first.samples


def test_batches_of_a_view_the_run_shrinks_hold_every_sample_once(make_dataset):
    from fiftyone_ssa.labelling.sources import iter_batches

    ds = make_dataset()
    ds.add_samples([fo.Sample(filepath=f"/tmp/batch_{i}.png", done=False) for i in range(7)])
    pending = ds.match(F("done") == False)  # noqa: E712  (a MongoDB expression)
    sizes, seen = [], []
    for batch in iter_batches(pending, 3):
        sizes.append(len(batch))
        for sample in batch:
            seen.append(sample.id)
            labelled = ds[sample.id]
            labelled["done"] = True  # labelled: leaves the view
            labelled.save()
    assert sizes == [3, 3, 1] and sorted(seen) == sorted(ds.values("id"))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(ds, 0))
