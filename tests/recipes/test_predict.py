"""--predict on image files: the 10,000 real Fashion-MNIST test images as PNG files give --evaluate's accuracy
exactly; 2 processes write the 1-process CSV; unreadable files are rows; an image of another size is converted
as evaluation converts a file (a tensor of another size is refused); the file runs' eval transform."""
import csv
import json

import numpy as np
import pytest
import torch

from common.config import UserError
from common.data.datasets import read_folder
from common.lifecycle.export import CLASS_NAMES, load_model
from common.lifecycle.preprocess import Preprocess
from support.images import FASHION
from support.inprocess import run_inprocess
from support.runs import run_recipe


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """The Fashion-MNIST test split as PNG files, named in its order, and its labels."""
    from PIL import Image
    from common.data.datasets import read_idx
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist")
    images, labels = (read_idx(FASHION / f"t10k-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3), ("labels", 1)))
    root = tmp_path_factory.mktemp("fashion_pngs")
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / f"{i:05d}.png", compress_level=0)
    return root, labels.tolist()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    run_inprocess("mnist_cnn", f"out_dir={out}", "data.name=fashion_mnist", "train.eval_every_steps=16",
                  "train.ckpt_every_steps=16", "train.ema_decay=0.9")
    return out


@pytest.fixture(scope="module")
def export(run):
    run_inprocess("mnist_cnn", "--export", str(run), "--to", str(run / "m.safetensors"), config=None)
    return run / "m.safetensors"


def predict(*args, check=True):
    return run_inprocess("mnist_cnn", "--predict", *map(str, args), config=None, check=check)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_accuracy_on_10000_real_png_files_equals_evaluate(run, pngs, tmp_path):
    root, labels = pngs
    ev = run_inprocess("mnist_cnn", "--evaluate", str(run), config=None).result
    p = predict(run, "--input", root, "--top-k", 3)
    table = rows(run / "predictions" / f"{root.name}.csv")
    assert table[0] == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3", "error"]
    assert [r[0] for r in table[1:]] == [str(root / f"{i:05d}.png") for i in range(10000)]
    correct = sum(r[1] == CLASS_NAMES["fashion_mnist"][y] for r, y in zip(table[1:], labels))
    assert 100.0 * correct / 10000 == ev["acc1"] and ev["acc1"] > 30, (correct, ev)
    assert all(1 >= float(r[2]) >= float(r[4]) >= float(r[6]) > 0 and r[-1] == "" for r in table[1:])
    assert "10000 classified, 0 unreadable" in p.stdout and "ema weights" in p.stdout


def test_two_processes_write_the_one_process_csv_with_unreadable_files_as_rows(run, export, pngs, tmp_path):
    root, _ = pngs
    (tmp_path / "broken.png").write_bytes(b"not an image")
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{root / f'{i:05d}.png'}\n" for i in range(9)) + "broken.png\nmissing.jpg\n\n")
    predict(run, "--input", listed, "--to", tmp_path / "one.csv")  # the run directory; 2 processes: its export
    p = run_recipe("mnist_cnn", "--predict", str(export), "--input", str(listed), "--to", str(tmp_path / "two.csv"),
                   nproc=2, config=None, check=False)
    assert p.returncode == 0 and "on 2 process(es)" in p.stdout, p.stderr[-3000:]
    one, two = rows(tmp_path / "one.csv"), rows(tmp_path / "two.csv")
    assert one == two and len(one) == 12
    assert [r[0] for r in one[-2:]] == [str(tmp_path / "broken.png"), str(tmp_path / "missing.jpg")]
    assert "cannot read image" in one[-2][-1] and "not an image" not in one[-2][-1] and one[-2][1] == ""
    assert "cannot read image" in one[-1][-1] and "No such file" in one[-1][-1]
    # A torch.export program (--export --to .pt2) predicts as the weights do, with only its sidecar JSON.
    run_inprocess("mnist_cnn", "--export", str(run), "--to", str(tmp_path / "m.pt2"), config=None)
    predict(tmp_path / "m.pt2", "--input", listed, "--to", tmp_path / "pt2.csv")
    pt2 = rows(tmp_path / "pt2.csv")
    assert [[r[0], r[1], r[3], r[5], r[-1]] for r in pt2] == [[r[0], r[1], r[3], r[5], r[-1]] for r in one]
    assert all(abs(float(a) - float(b)) <= 2e-6 for r, q in zip(pt2[1:10], one[1:10]) for a, b in zip(r[2:7:2], q[2:7:2]))
    # None readable: the CSV says why for each, and the command is exit 2 in one line.
    listed.write_text("broken.png\nmissing.jpg\n")
    p = predict(run, "--input", listed, "--to", tmp_path / "none.csv", check=False)
    assert p.returncode == 2 and "none of the 2 images could be read" in p.stderr and "Traceback" not in p.stderr
    assert len(rows(tmp_path / "none.csv")) == 3


def test_bad_input_is_exit_2_naming_the_fix(run, pngs, tmp_path):
    cases = [(["--input", tmp_path / "nowhere"], "does not exist; give an image, a directory"),
             (["--input", tmp_path], "holds no images"),
             (["--input", FASHION / "t10k-labels-idx1-ubyte.gz"], "is not an image (.bmp, .jpeg, .jpg, .pgm, .png, "
              ".ppm, .tif, .tiff, .webp) and cannot be read as a text file of paths"),
             (["--input", pngs[0] / "00000.png", "--top-k", 11], "the model knows 10 classes; use --top-k 10")]
    for args, message in cases:
        p = predict(run, *args, check=False)
        assert p.returncode == 2 and message in p.stderr, p.stderr
    p = run_inprocess("gan_mnist", "--predict", str(run), "--input", str(tmp_path), config=None, check=False)
    assert p.returncode == 2 and "gan_mnist is a generative recipe" in p.stderr, p.stderr


def test_an_image_of_another_size_is_converted_as_evaluation_converts_a_file(export, tmp_path):
    """A 41x46 colour JPEG for the 1x28x28 model: grey, fitted to 28x28 exactly as a data.name=folder run reads
    the file; a uint8 tensor of that size is refused (evaluation never converts one)."""
    from PIL import Image
    model, info = load_model(export)  # no task: recipes/mnist_cnn.py, named in the file
    pixels = np.random.default_rng(0).integers(0, 256, (46, 41, 3), dtype=np.uint8)
    for split in ("train", "val"):
        (tmp_path / "tree" / split / "c").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "tree" / split / "c" / "a.jpg")
    jpeg = tmp_path / "tree" / "val" / "c" / "a.jpg"
    as_read = read_folder(tmp_path / "tree", "val", [1, 28, 28])[0]
    pre = Preprocess.from_file(export)
    assert pre.shape == (1, 28, 28) and pre.classes == CLASS_NAMES["fashion_mnist"]
    assert torch.equal(pre.load(jpeg), as_read[0])
    x = info.preprocess([jpeg, jpeg.read_bytes(), Image.open(jpeg)])
    want = (as_read.float() / 255 - 0.2860) / 0.3530
    assert x.shape == (3, 1, 28, 28) and all(torch.allclose(row, want[0], atol=1e-6) for row in x)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    with pytest.raises(UserError, match=r"a uint8 image of \[1, 46, 41\] for a model trained on 1 x 28 x 28 images"):
        info.preprocess(torch.zeros(1, 1, 46, 41, dtype=torch.uint8))
    assert model(x).shape == (3, 10)
    # A .pt2/.onnx file's metadata is the JSON beside it; a GAN's generator (noise in) has no image transform.
    (tmp_path / "m.onnx.json").write_text(json.dumps(info.meta))
    assert torch.equal(Preprocess.from_file(tmp_path / "m.onnx")([jpeg]), x[:1])
    with pytest.raises(UserError, match=r"cannot read .*m\.pt2\.json, the metadata of .*m\.pt2"):
        Preprocess.from_file(tmp_path / "m.pt2")
    gan = {**info.meta, "recipe": "gan_mnist", "model": "G", "input": {"shape": [1, 28, 28], "mean": [0.5], "std": [0.5]}}
    with pytest.raises(UserError, match="the gan_mnist model 'G' takes no image input the metadata describes"):
        Preprocess.from_meta(gan)
