"""mindcv_ext.benchmark.models: variants, pooled rounds, the step timed alone (tiny sizes; no timing asserted)."""
import pytest

import mindspore as ms

from mindcv_ext.benchmark import cli, models


def test_language_models_are_not_in_the_models_suite():
    with pytest.raises(ValueError, match=r"no registered model matches --models \['gpt2\*'\]"):
        models.run_models(models=["gpt2*"])


def test_train_step_alone_in_this_process():
    previous = ms.get_context("mode")
    try:
        record = models.measure_train_step(
            model="gmlp_s16_224", create_kwargs=dict(num_classes=10, img_size=32, model_kwargs={"num_blocks": 1}),
            batch_size=2, image_size=32, steps=2, warmup=1, cpu_kernels="off", mode=1)
    finally:
        ms.set_context(mode=previous)
    assert record["batch_size"] == 2 and record["step_alone_images_per_s"] > 0


def test_plot_models(tmp_path):
    rows = [dict(model="m", variant="dense", path="accel", batch_size=2, img_size=32, train_step_ms=10.0),
            dict(model="m_monarch", variant="monarch", path="accel", batch_size=2, img_size=32, train_step_ms=5.0),
            dict(model="m", variant="dense", path="plain", batch_size=2, img_size=32, train_step_ms=20.0)]
    assert models.plot_models(rows, str(tmp_path / "models.png")) and (tmp_path / "models.png").is_file()


def test_model_variants_and_the_pixelfly_selection():
    registered = {"mixer_b16_224", "mixer_b16_224_monarch", "mixer_s32_224", "mixer_s32_224_monarch",
                  "dvt_t2t_vit_12"}
    assert cli.parse_args([]).pixelfly_models == ["mixer_b16_224"]  # fly's Pixelfly Mixer-B by default
    assert models.model_variants("mixer_b16_224", registered, models.PIXELFLY_MODELS) == [
        ("dense", "mixer_b16_224", "mixer_b16_224", None),
        ("monarch", "mixer_b16_224_monarch", "mixer_b16_224_monarch", None),
        ("pixelfly", "mixer_b16_224_pixelfly", "mixer_b16_224", "pixelfly")]
    assert [v[0] for v in models.model_variants("mixer_s32_224", registered, ["mixer_b16*"])] == ["dense",
                                                                                                "monarch"]
    # a model without a Monarch twin is measured dense only, not as a missing '<name>_monarch', whether or not a
    # Pixelfly pattern is given
    for patterns in ([], ["mixer*"]):
        assert models.model_variants("dvt_t2t_vit_12", registered, patterns) == [
            ("dense", "dvt_t2t_vit_12", "dvt_t2t_vit_12", None)], patterns


def test_summarize_model_pools_rounds():
    """Rounds pool their steps into one median (of an even or an odd count, rounds of unequal sizes); the peak is
    the largest of the workers', whichever round it came from."""
    rounds = [dict(model="m", params=10, macs_g=1.0, batch_size=8, img_size=224, train_samples_ms=[100.0, 300.0],
                   infer_samples_ms=[40.0, 40.0], peak_rss_mb=500),
              dict(model="m", params=10, macs_g=1.0, batch_size=8, img_size=224, train_samples_ms=[200.0, 900.0],
                   infer_samples_ms=[10.0, 20.0], peak_rss_mb=700)]
    row = models.summarize_model(rounds)
    assert row["train_step_ms"] == 250.0 and row["train_img_s"] == 32.0
    assert row["infer_ms"] == 30.0 and row["peak_rss_mb"] == 700 and row["params"] == 10
    assert not any(key.endswith("_samples_ms") for key in row)
    rounds = [dict(model="m", params=1, batch_size=4, train_samples_ms=[10.0, 30.0], infer_samples_ms=[8.0],
                   peak_rss_mb=300), dict(model="m", params=1, batch_size=4, train_samples_ms=[20.0],
                                          infer_samples_ms=[2.0, 4.0], peak_rss_mb=200)]
    row = models.summarize_model(rounds)
    assert (row["train_step_ms"], row["train_img_s"], row["infer_ms"], row["peak_rss_mb"]) == (20.0, 200.0, 4.0, 300)


def test_a_model_with_few_classes_trains_on_labels_it_has(graph_mode):
    """The training step's labels cycle through the model's own classes (a label past the head is an error)."""
    result = models.measure_model(model="gmlp_s16_224", path="plain", batch_size=12, img_size=32, repeats=1,
                                  warmup=0, model_kwargs={"num_classes": 10, "num_blocks": 1, "patch_size": 8},
                                  cpu_kernels="off")
    assert result["batch_size"] == 12 and len(result["train_samples_ms"]) == 1 and result["params"] > 0
