"""Feature-space pictures, attention maps and training curves (engine/features, attention_maps, plots)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ferkit.config import TrainConfig
from ferkit.data import FER_CLASSES, FERDataset
from ferkit.data.augment import prepare
from ferkit.detect import sample_image_path
from ferkit.analysis import features as features_module
from ferkit.analysis.attention_maps import attention_picture, cbam_spatial_maps, grad_cam
from ferkit.engine.modelfile import ModelMeta, build_model, save_checkpoint
from ferkit.analysis.features import (
    extract_features, feature_picture, feature_stats, plot_features, project_2d, resolve_projection,
)
from ferkit.engine.curves import plot_curves, read_metrics
from ferkit.errors import FerkitError
from ferkit.models import create_model


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics: the zero-initialised last BNs would make each block the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
    return model.eval()


def write_checkpoint(path, attention="cbam", loss="island", input_size=16, centers=None):
    """A training checkpoint as `ferkit train` writes best.pt, with random weights."""
    cfg = TrainConfig(attention=attention, input_size=input_size, loss=loss)
    meta = ModelMeta.from_config(cfg, FER_CLASSES)
    torch.manual_seed(0)
    model = randomise_bn(build_model(meta))
    criterion = {} if centers is None else {"aux.centers": centers}
    save_checkpoint(path, {"meta": meta.to_dict(), "config": {"loss": loss}, "model": model.state_dict(),
                           "criterion": criterion, "epoch": 1, "val_acc": 0.0})
    return path


def png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


# -- feature statistics and projection ----------------------------------------------------------------

def three_class_features(dims=512, scale=10.0, spread=1.0):
    """Classes at scale*(1,0), scale*(0,1), scale*(1,1); 4 points each at distance spread (class 2: 2*spread)
    from the center along two spare axes, so every class mean is exactly its center."""
    centers = torch.zeros(3, dims, dtype=torch.float64)
    centers[0, 0] = centers[1, 1] = centers[2, 0] = centers[2, 1] = scale
    rows, labels = [], []
    for k in range(3):
        s = spread * (2 if k == 2 else 1)
        for axis in (5, 6):
            for sign in (1, -1):
                point = centers[k].clone()
                point[axis] += sign * s
                rows.append(point)
                labels.append(k)
    return torch.stack(rows).float(), torch.tensor(labels)


def test_feature_stats_match_hand_computed_geometry():
    x, y = three_class_features(scale=10.0, spread=1.0)
    stats = feature_stats(x, y, num_classes=3)
    intra = (4 * 1 + 4 * 1 + 4 * 2) / 12                        # 4/3
    inter = (10 * math.sqrt(2) + 10 + 10) / 3                    # |c0-c1|, |c0-c2|, |c1-c2|
    cosine = (0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3      # sqrt(2)/3
    assert stats["n"] == 12 and stats["dims"] == 512 and stats["classes_present"] == [0, 1, 2]
    assert stats["intra_distance"] == pytest.approx(intra, rel=1e-6)
    assert stats["inter_distance"] == pytest.approx(inter, rel=1e-6)
    assert stats["intra_inter_ratio"] == pytest.approx(intra / inter, rel=1e-6)
    assert stats["center_cosine"] == pytest.approx(cosine, rel=1e-6)
    # About the mean of the centers, (20/3, 20/3): d0 = (10, -20)/3, d1 = (-20, 10)/3, d2 = (10, 10)/3.
    centred = (-0.8 - 1 / math.sqrt(10) - 1 / math.sqrt(10)) / 3
    assert stats["center_cosine_centred"] == pytest.approx(centred, rel=1e-6)
    assert "learned_center_cosine" not in stats


def test_feature_stats_ratio_scales_with_spread_and_skips_absent_classes():
    x, y = three_class_features(spread=1.0)
    wide = feature_stats(*three_class_features(spread=3.0), num_classes=3)
    # Five classes declared, two absent: the statistics are those of the three present ones.
    sparse = feature_stats(x, y, num_classes=5)
    assert wide["intra_inter_ratio"] == pytest.approx(3 * sparse["intra_inter_ratio"], rel=1e-6)
    assert sparse["classes_present"] == [0, 1, 2]


def test_feature_stats_learned_centers_cosine():
    x, y = three_class_features()
    opposite = torch.zeros(2, 512)
    opposite[0, 0], opposite[1, 0] = 1.0, -3.0
    assert feature_stats(x, y, 3, centers=opposite)["learned_center_cosine"] == pytest.approx(-1.0)
    orthogonal = torch.eye(7, 512)
    assert feature_stats(x, y, 3, centers=orthogonal)["learned_center_cosine"] == pytest.approx(0.0)


def test_feature_stats_needs_two_classes():
    x, y = three_class_features()
    with pytest.raises(ValueError, match="two classes"):
        feature_stats(x[y == 0], y[y == 0], 3)


def test_pca_projection_keeps_the_dominant_direction():
    generator = torch.Generator().manual_seed(0)
    direction = F.normalize(torch.randn(512, generator=generator), dim=0)
    t = torch.randn(300, generator=generator) * 10
    x = t[:, None] * direction + 0.1 * torch.randn(300, 512, generator=generator) + 5.0
    points, method = project_2d(x, "pca")
    assert method == "pca" and points.shape == (300, 2) and points.dtype == torch.float32
    first = points[:, 0].double()
    corr = torch.corrcoef(torch.stack([first, t.double()]))[0, 1]
    assert abs(float(corr)) > 0.999
    # Centred and exactly linear: the first coordinate is the projection on the direction (up to sign).
    assert float(first.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(first.std() / t.double().std()) == pytest.approx(1.0, abs=0.02)
    assert float(points[:, 1].std()) < 0.05 * float(first.std())
    again, _ = project_2d(x, "pca")
    assert torch.equal(points, again)


def test_projection_choice_and_errors(monkeypatch):
    assert resolve_projection("auto") in ("tsne", "umap", "pca")
    with pytest.raises(FerkitError, match="valid: auto, tsne, umap, pca"):
        resolve_projection("lda")
    monkeypatch.setattr(features_module, "_PROJECTION_PACKAGES",
                        {"tsne": ("ferkit_no_such_module", "scikit-learn"), "umap": ("ferkit_no_umap", "umap-learn")})
    assert resolve_projection("auto") == "pca"
    with pytest.raises(FerkitError, match="pip install scikit-learn"):
        resolve_projection("tsne")


def test_extract_features_are_the_models_pooled_features(tiny_splits):
    split = tiny_splits["test"]
    meta = ModelMeta.from_dict({"model": "resnet18", "stem": "cifar", "attention": "cbam", "reduction": 16, "in_chans": 1,
                                "input_size": 16, "classes": list(FER_CLASSES), "mean": 0.5, "std": 0.25}, "test")
    torch.manual_seed(0)
    model = randomise_bn(create_model("resnet18", attention="cbam"))
    feats, labels = extract_features(model, split, meta, batch_size=8)
    assert feats.shape == (len(split), 512) and feats.dtype == torch.float32
    assert torch.equal(labels, split.labels)
    with torch.no_grad():
        direct = model.forward_features(prepare(split.images, 1, 16, 0.5, 0.25))
    torch.testing.assert_close(feats, direct, rtol=1e-4, atol=1e-5)


def test_plot_features_writes_a_png(tmp_path):
    x, y = three_class_features()
    points, _ = project_2d(x, "pca")
    out = plot_features(points, y, ["a", "b", "c"], title="three classes", path=tmp_path / "f" / "feat.png")
    width, height = png_size(out)
    assert (width, height) == (1125, 975)  # 7.5 x 6.5 inches at 150 dpi
    assert out.stat().st_size > 10_000


def test_feature_picture_writes_png_and_json(tmp_path, tiny_splits):
    centers = torch.randn(7, 512)
    ckpt = write_checkpoint(tmp_path / "best.pt", centers=centers)
    split = tiny_splits["test"]
    payload = feature_picture(ckpt, split, tmp_path / "out" / "features", max_points=21, seed=3, method="pca")
    saved = json.loads((tmp_path / "out" / "features.json").read_text())
    assert saved == payload
    assert payload["n"] == 21 and payload["method"] == "pca" and payload["loss"] == "island"
    assert payload["split"] == "test" and payload["classes"] == list(FER_CLASSES)
    unit = F.normalize(centers.double(), dim=1)
    cos = unit @ unit.t()
    expected = float(cos[~torch.eye(7, dtype=torch.bool)].mean())
    assert payload["stats"]["learned_center_cosine"] == pytest.approx(expected, rel=1e-5)
    assert 0 < payload["stats"]["intra_inter_ratio"] < math.inf
    assert png_size(tmp_path / "out" / "features.png")[0] > 500


def test_feature_picture_rejects_other_classes(tmp_path, tiny_splits):
    ckpt = write_checkpoint(tmp_path / "best.pt")
    split = tiny_splits["test"]
    other = FERDataset(split.images, split.labels, tuple(reversed(FER_CLASSES)), "test", "generated:other")
    with pytest.raises(FerkitError, match="do not match"):
        feature_picture(ckpt, other, tmp_path / "features", method="pca")


# -- attention maps ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cbam_model():
    torch.manual_seed(0)
    return randomise_bn(create_model("resnet18", attention="cbam"))


def test_cbam_maps_have_input_size_and_lie_in_unit_interval(cbam_model):
    x = torch.randn(2, 1, 32, 32)
    maps = cbam_spatial_maps(cbam_model, x)
    assert list(maps) == ["stage1", "stage2", "stage3", "stage4"]
    for m in maps.values():
        assert m.shape == (2, 1, 32, 32)
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
        assert float(m.std()) > 0  # randomised BNs make the maps vary over the image
    assert len(cbam_spatial_maps(cbam_model, x, blocks="all")) == 8


def test_cbam_map_is_the_last_blocks_spatial_gate(cbam_model):
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        h = cbam_model.stages[0](cbam_model.stem(x))
        block = cbam_model.stages[1][0](h)
        last = cbam_model.stages[1][1]
        branch = last.bn2(last.conv2(last.relu(last.bn1(last.conv1(block)))))
        gate = last.attn.spatial.gate(last.attn.channel(branch))  # 16 x 16 for stage 2
    expected = F.interpolate(gate, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cbam_spatial_maps(cbam_model, x)["stage2"], expected)


@pytest.mark.parametrize("attention", ["none", "se"])
def test_models_without_cbam_have_no_spatial_maps(attention):
    model = create_model("resnet18", attention=attention)
    assert cbam_spatial_maps(model, torch.randn(1, 1, 16, 16)) == {}


def test_grad_cam_in_unit_interval_not_constant_and_equals_cam(cbam_model):
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    cam = grad_cam(cbam_model, x)
    assert cam.shape == (3, 1, 32, 32)
    assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    assert all(float(c.max()) == pytest.approx(1.0) and float(c.std()) > 0.01 for c in cam)
    # Behind a global average pool and a linear layer, Grad-CAM is CAM: relu(sum_c w[target, c] A_c).
    with torch.no_grad():
        maps = cbam_model.forward_maps(x)
        target = cbam_model(x).argmax(dim=1)
    raw = F.relu(torch.einsum("nc,nchw->nhw", cbam_model.fc.weight[target], maps)).unsqueeze(1)
    raw = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    low, high = raw.amin(dim=(2, 3), keepdim=True), raw.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(cam, (raw - low) / (high - low), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in cbam_model.parameters())


def test_grad_cam_target_changes_the_map_and_works_without_attention(cbam_model):
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first, second = cbam_model(x)[0].topk(2).indices.tolist()
    top, runner_up = grad_cam(cbam_model, x, target=first), grad_cam(cbam_model, x, target=second)
    assert float(top.max()) == pytest.approx(1.0) and float(runner_up.max()) == pytest.approx(1.0)
    assert not torch.allclose(top, runner_up, atol=1e-3)
    plain = randomise_bn(create_model("resnet18", attention="none"))
    assert grad_cam(plain, x).shape == (1, 1, 32, 32)
    with pytest.raises(FerkitError, match="Grad-CAM needs a ferkit ResNet"):
        grad_cam(torch.nn.Conv2d(1, 1, 3), x)


def test_attention_picture_on_the_sample_photo(tmp_path):
    ckpt = write_checkpoint(tmp_path / "cbam.pt", input_size=48)
    plain = write_checkpoint(tmp_path / "plain.pt", attention="none", input_size=48)
    photo = sample_image_path()
    rows = attention_picture(ckpt, [photo, photo], tmp_path / "cbam.png", stages=(2, 4))
    assert len(rows) == 2
    assert rows[0]["box"] is not None and rows[0]["note"] == ""  # the astronaut's face is found
    assert rows[0]["label"] in FER_CLASSES and 0 < rows[0]["confidence"] <= 1
    assert rows[0]["panels"] == ["face", "stage 2", "stage 4", "Grad-CAM"]
    # the face, label and probability are the Recognizer's own (one view: tta none)
    from ferkit.engine.predict import Recognizer

    (result,) = Recognizer.load(ckpt, backend="torch", tta="none")(photo)
    assert rows[0]["box"] == list(result.faces[0].box) and rows[0]["label"] == result.top1
    assert rows[0]["confidence"] == pytest.approx(result.top1conf, abs=1e-5)
    plain_rows = attention_picture(plain, [photo], tmp_path / "plain.png", detect=False)
    assert plain_rows[0]["panels"] == ["face", "Grad-CAM"] and plain_rows[0]["box"] is None
    (cbam_w, cbam_h), (plain_w, plain_h) = png_size(tmp_path / "cbam.png"), png_size(tmp_path / "plain.png")
    assert cbam_w > plain_w and cbam_h > plain_h  # 4 panels x 2 rows against 2 panels x 1 row
    with pytest.raises(FerkitError, match="stages must be chosen from 1..4"):
        attention_picture(ckpt, [photo], tmp_path / "bad.png", stages=(5,))
    with pytest.raises(FerkitError, match="nope.jpg"):
        attention_picture(ckpt, [tmp_path / "nope.jpg"], tmp_path / "bad.png")


# -- training curves --------------------------------------------------------------------------------

def write_metrics(run_dir, epochs, offset):
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"epoch": e, "loss": 2.0 / e + offset, "train_acc": 0.3 + 0.05 * e,
                                "val_acc": 0.25 + 0.04 * e - offset, "val_nll": 1.8 / e, "lr": 0.1,
                                "wall_s": 10.0 * e}) + "\n")
    return run_dir


def test_plot_curves_of_two_runs(tmp_path):
    a = write_metrics(tmp_path / "r18", 8, 0.0)
    b = write_metrics(tmp_path / "r18_cbam_island", 5, 0.02)
    out = plot_curves([a, b], tmp_path / "curves" / "runs.png")
    assert png_size(out) == (1650, 630)  # 11 x 4.2 inches at 150 dpi
    assert out.stat().st_size > 20_000
    assert [r["epoch"] for r in read_metrics(b)] == [1, 2, 3, 4, 5]


def test_read_metrics_keeps_the_last_record_of_a_repeated_epoch(tmp_path):
    run = write_metrics(tmp_path / "run", 2, 0.0)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 9.0, "train_acc": 0.1, "val_acc": 0.1}) + "\n\n")
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["loss"] == 9.0


def test_plot_curves_names_the_bad_file(tmp_path):
    good = write_metrics(tmp_path / "good", 3, 0.0)
    with pytest.raises(FerkitError, match=r"missing[/\\]metrics.jsonl: no such file"):
        plot_curves([good, tmp_path / "missing"], tmp_path / "out.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1, "train_acc": 0.5, "val_acc": 0.5}\n{"epoch": 2,\n')
    with pytest.raises(FerkitError, match=r"broken[/\\]metrics.jsonl, line 2: not JSON"):
        plot_curves([good, broken], tmp_path / "out.png")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1.0}\n')
    with pytest.raises(FerkitError, match="line 1: missing or non-numeric train_acc, val_acc"):
        plot_curves([partial], tmp_path / "out.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(FerkitError, match="holds no epochs"):
        plot_curves([empty], tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


# -- emotion over time -------------------------------------------------------------------------------

def _frame(source, frame, faces, fps=10.0):
    return {"source": source, "frame": frame, "time_s": frame / fps, "faces": [
        {"track": track, "probs": {"happy": happy, "sad": 1 - happy}} for track, happy in faces]}


def test_tracks_gather_each_persons_sightings_in_time_order():
    from ferkit.analysis.timeline import tracks_of

    records = [{"source": "a.jpg", "frame": None, "faces": [{"track": None, "probs": {"happy": 1.0}}]},
               _frame("v.mp4", 0, [(1, 0.9), (2, 0.2)]), _frame("v.mp4", 2, [(1, 0.8)]),
               _frame("v.mp4", 4, [(2, 0.4), (3, 0.5)])]
    tracks = tracks_of(records)
    assert [(t.source, t.track, t.times) for t in tracks] == [("v.mp4", 1, [0.0, 0.2]), ("v.mp4", 2, [0.0, 0.4]),
                                                               ("v.mp4", 3, [0.4])]
    assert [p["happy"] for p in tracks[1].probs] == [0.2, 0.4] and tracks[0].unit == "s"


def test_timeline_of_a_predicted_clip_from_its_jsonl_and_csv(tmp_path, capsys):
    import cv2

    from ferkit.analysis.timeline import plot_timeline, read_results
    from ferkit.cli import main

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    face = cv2.resize(cv2.imread(str(sample_image_path())), (240, 240))
    for _ in range(4):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame[:, 40:280] = face
        writer.write(frame)
    writer.release()
    save = tmp_path / "annotated"
    assert main(["predict", str(clip), "--out", str(tmp_path / "r.jsonl"), "--save", str(save), "--plot",
                 "--no-progress"]) == 0
    assert (save / "clip_ferkit_timeline.png").is_file() and (save / "clip_ferkit.mp4").is_file()
    records = read_results(tmp_path / "r.jsonl")
    assert [r["frame"] for r in records] == [0, 1, 2, 3] and records[0]["faces"][0]["track"] == 1
    assert main(["predict", str(clip), "--out", str(tmp_path / "r.csv"), "--no-progress"]) == 0
    from_csv = read_results(tmp_path / "r.csv")
    assert [r["faces"][0]["probs"] for r in from_csv] == [r["faces"][0]["probs"] for r in records]  # same rounding
    assert main(["plot", "timeline", str(tmp_path / "r.csv"), "--out", str(tmp_path / "t.png")]) == 0
    assert Image.open(tmp_path / "t.png").size[0] > 500
    with pytest.raises(FerkitError, match="no tracked faces"):
        plot_timeline([{"source": "a.jpg", "frame": None, "faces": []}], tmp_path / "none.png")
