"""Issue 6 baselines (DDPM, DiffuseVAE, latent diffusion): the shared generator contract on tiny configs
(16 px, 2 sampling steps, as diffusers' fast tests) and model-specific properties."""

from __future__ import annotations

import pytest
import torch

from baselines import ddpm, diffusevae, ldm
from baselines.trainer import Batch
from cxrbench.errors import DataError, UsageError, WeightsError
from cxrbench.labels import LABELS
from .generator_contract import GeneratorTesterMixin, LabelledImages


def tiny_ddpm(**kw):
    return ddpm.DDPMConfig(
        image_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_groups=8, num_train_timesteps=100,
        sample_steps=2, batch_size=4, label_bank_size=8, **kw,
    )


class TestDDPM(GeneratorTesterMixin):
    name = "ddpm"

    def config(self):
        return tiny_ddpm()


def test_ddpm_guidance_scale_and_steps_change_samples():
    torch.manual_seed(0)
    model = ddpm.DDPM(tiny_ddpm()).eval()
    y = torch.zeros(2, len(LABELS))
    y[:, LABELS.index("Edema")] = 1
    base = model.sample(2, labels=y, seed=0)
    assert torch.equal(base, model.sample(2, labels=y, seed=0, guidance_scale=2.0, steps=2))  # the config's values
    assert not torch.equal(base, model.sample(2, labels=y, seed=0, guidance_scale=1.0))
    assert not torch.equal(base, model.sample(2, labels=y, seed=0, steps=3))


def test_ddpm_dropped_labels_are_label_independent():
    # the unconditional branch of classifier-free guidance must not see the labels at all
    torch.manual_seed(0)
    model = ddpm.DDPM(tiny_ddpm())
    dropped = torch.ones(3, dtype=torch.bool)
    a = model.label_embedding(torch.zeros(3, len(LABELS)), dropped)
    b = model.label_embedding(torch.ones(3, len(LABELS)), dropped)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.label_embedding(torch.zeros(3, len(LABELS)), ~dropped))


# ---------------------------------------------------------------------------------------------------------
# latent diffusion


def tiny_ldm(**kw):
    return ldm.LDMConfig(
        image_size=16, ae_channels=(8, 16), latent_channels=4, block_out_channels=(8, 16), norm_groups=8,
        text_dim=16, num_train_timesteps=100, sample_steps=2, batch_size=4, label_bank_size=8, **kw,
    )


class TestLDM(GeneratorTesterMixin):
    name = "ldm"

    def config(self):
        return tiny_ldm()


def test_prompt_round_trip_and_errors():
    for labels in ([], ["Edema"], ["Effusion", "Pleural_Thickening", "No Finding"]):
        y = torch.zeros(len(LABELS))
        for lab in labels:
            y[LABELS.index(lab)] = 1
        for pos in (None, "top left", "center", "bottom right"):
            got_y, got_pos = ldm.parse_prompt(ldm.make_prompt(y, pos))
            assert torch.equal(got_y, y) and got_pos == pos
    y, pos = ldm.parse_prompt("Chest X-ray,  EDEMA , pleural   thickening,bottom right")
    assert pos == "bottom right" and y[LABELS.index("Edema")] == 1 and y[LABELS.index("Pleural_Thickening")] == 1
    with pytest.raises(UsageError, match="known labels: atelectasis.*positions: top left"):
        ldm.parse_prompt("chest x-ray, broken arm")
    with pytest.raises(UsageError, match="at most one position"):
        ldm.parse_prompt("chest x-ray, edema, top left, bottom right")


def test_position_of_box_grid():
    # the box centre picks the cell; the grid is row-major in image coordinates
    assert ldm.position_of_box(0, 0, 10, 10) == "top left"
    assert ldm.position_of_box(1000, 0, 24, 10) == "top right"
    assert ldm.position_of_box(500, 500, 24, 24) == "center"
    assert ldm.position_of_box(0, 900, 100, 124) == "bottom left"
    assert ldm.position_of_box(600, 700, 400, 300) == "bottom right"  # centre (800, 850)
    table = ldm.bbox_positions()
    assert len(table) > 800 and set(table.values()) <= set(ldm.POSITIONS)


def test_prompts_condition_sampling():
    torch.manual_seed(0)
    model = ldm.LDM(tiny_ldm()).eval()
    plain = model.sample(2, prompts="chest x-ray, effusion", seed=0)
    placed = model.sample(2, prompts="chest x-ray, effusion, bottom right", seed=0)
    other = model.sample(2, prompts="chest x-ray, effusion, top left", seed=0)
    assert torch.equal(plain, model.sample(2, prompts=["chest x-ray, effusion"] * 2, seed=0))
    assert not torch.equal(plain, placed) and not torch.equal(placed, other)
    # labels build the same prompts as text does
    y = torch.zeros(2, len(LABELS))
    y[:, LABELS.index("Effusion")] = 1
    assert torch.equal(plain, model.sample(2, labels=y, seed=0))
    with pytest.raises(UsageError, match="known labels"):
        model.sample(2, prompts="chest x-ray, fracture", seed=0)


def test_ldm_training_uses_positions(tmp_path):
    # a labels.csv position column reaches the training prompts through LDM.train's dataset wrapper
    from cxrbench.data import ImageFolder
    from cxrbench.synthetic import synthetic_cxr
    from tests.conftest import write_pngs

    write_pngs(tmp_path / "imgs", synthetic_cxr(4, 16, seed=0))
    rows = ["path,Edema,position", "img_0000.png,1,top left", "img_0001.png,0,", "img_0002.png,1,center",
            "img_0003.png,0,bottom right"]
    (tmp_path / "imgs" / "labels.csv").write_text("\n".join(rows) + "\n")
    folder = ImageFolder(tmp_path / "imgs")
    ds = ldm.with_positions(folder)
    labels = torch.stack([ds[i][1] for i in range(4)])
    prompts = dict(zip(folder.ids, ldm.LDM(tiny_ldm()).prompts_for(labels)))
    assert prompts == {
        "img_0000.png": "chest x-ray, edema, top left", "img_0001.png": "chest x-ray",
        "img_0002.png": "chest x-ray, edema, center", "img_0003.png": "chest x-ray, bottom right",
    }
    # and LDM.train takes such a folder through the shared trainer
    from baselines.trainer import TrainOptions
    from cxrbench.data.transforms import CXRTransform

    train_set = ImageFolder(tmp_path / "imgs", transform=CXRTransform(image_size=16))
    model = ldm.LDM.train(train_set, tiny_ldm(), tmp_path / "run", options=TrainOptions(steps=1, progress=False))
    assert model.label_bank[:, LABELS.index("Edema")].sum() > 0
    (tmp_path / "imgs" / "labels.csv").write_text("path,position\nimg_0000.png,upper left\n")
    with pytest.raises(DataError, match="unknown position"):
        ldm.with_positions(ImageFolder(tmp_path / "imgs"))


# ---------------------------------------------------------------------------------------------------------
# DiffuseVAE


def tiny_diffusevae(**kw):
    return diffusevae.DiffuseVAEConfig(
        image_size=16, vae_channels=(8, 16), vae_z_dim=8, block_out_channels=(8, 16), layers_per_block=1,
        attention=False, norm_groups=8, num_train_timesteps=100, sample_steps=2, batch_size=4, **kw,
    )


class TestDiffuseVAE(GeneratorTesterMixin):
    name = "diffusevae"

    def config(self):
        return tiny_diffusevae(rep_lambda=0.5)


def test_representation_term_changes_the_loss():
    images = LabelledImages(4, 16, seed=1).images
    runs = {}
    for lam in (0.0, 0.5):
        torch.manual_seed(0)
        model = diffusevae.DiffuseVAE(tiny_diffusevae(rep_lambda=lam))
        opts = model.configure_optimizers()
        torch.manual_seed(1)
        logged = model.training_step(Batch(images, torch.zeros(4, len(LABELS))), opts, 0)
        runs[lam] = (logged, model.unet.conv_in.weight.detach().clone())
    (plain, w0), (rep, w1) = runs[0.0], runs[0.5]
    assert "rep" not in plain and rep["rep"] > 0
    assert rep["diffusion"] == pytest.approx(plain["diffusion"])  # same init, same noise: the term is extra
    assert rep["loss"] == pytest.approx(plain["loss"] + 0.5 * rep["rep"], rel=1e-5)
    assert not torch.equal(w0, w1)  # and its gradient reaches the UNet


def test_representation_encoders():
    x = LabelledImages(3, 32, seed=0).images
    a, b = diffusevae.load_representation("random"), diffusevae.load_representation("random")
    assert torch.equal(a(x), b(x)) and a(x).shape == (3, 512)
    assert not torch.equal(a(x), diffusevae.load_representation("random:1")(x))
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(WeightsError, match="cxrbench train moco"):
        diffusevae.load_representation("/nonexistent/moco")
    # the encoder is not part of the saved model
    model = diffusevae.DiffuseVAE(tiny_diffusevae(rep_lambda=1.0))
    model.representation(torch.device("cpu"))
    assert not any(k.startswith("_rep") for k in model.state_dict())


def test_reconstruct_cli_writes_paired_manifest(tmp_path):
    import pandas as pd

    from cxrbench.cli import main
    from cxrbench.synthetic import synthetic_cxr
    from tests.conftest import write_pngs

    torch.manual_seed(0)
    model = diffusevae.DiffuseVAE(tiny_diffusevae())
    model.save_pretrained(tmp_path / "run")
    write_pngs(tmp_path / "src" / "sub", synthetic_cxr(3, 16, seed=0))
    argv = ["sample", str(tmp_path / "run"), "--reconstruct", str(tmp_path / "src"), "--out", str(tmp_path / "rec")]
    assert main(argv + ["--batch-size", "1"]) == 0
    man = pd.read_csv(tmp_path / "rec" / "manifest.csv")
    assert sorted(man["source"]) == [f"sub/img_{i:04d}.png" for i in range(3)]
    from cxrbench.data import ImageFolder, load_image
    from cxrbench.data.transforms import CXRTransform

    # each written image is the model's reconstruction of the source it names
    folder = ImageFolder(tmp_path / "src", transform=CXRTransform(image_size=16))
    for _, row in man.iterrows():
        src = folder[folder.ids.index(row["source"])][0][None]
        want = model.reconstruct(src, seed=int(row["seed"]))[0, 0].numpy()
        got = load_image(tmp_path / "rec" / row["path"])
        assert abs(got - want).max() <= 1 / 255 + 1e-6


def test_sample_cli_prompt(tmp_path):
    import pandas as pd

    from cxrbench.cli import main
    from cxrbench.data import load_image

    torch.manual_seed(0)
    model = ldm.LDM(tiny_ldm()).eval()
    model.save_pretrained(tmp_path / "run")
    prompt = "chest x-ray, effusion, bottom right"
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--prompt", prompt, "--out", str(tmp_path / "s")]) == 0
    man = pd.read_csv(tmp_path / "s" / "manifest.csv")
    assert (man["prompt"] == prompt).all() and (man["Effusion"] == 1).all() and (man["Edema"] == 0).all()
    want = model.sample(2, prompts=prompt, seed=int(man["seed"][0]))
    for i, row in man.iterrows():
        assert abs(load_image(tmp_path / "s" / row["path"]) - want[i, 0].numpy()).max() <= 1 / 255 + 1e-6
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--prompt", "chest x-ray, fracture",
                 "--out", str(tmp_path / "bad")]) != 0
