"""Diffusion baselines (DDPM, DiffuseVAE, latent diffusion): the shared generator contract on tiny configs
(16 px, 2 sampling steps, as diffusers' fast tests) and model-specific properties."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines import ddpm, diffusevae, ldm
from baselines.trainer import Batch
from cxrbench.data.labels import LABELS
from cxrbench.errors import DataError, UsageError, WeightsError

from ..generator_contract import GeneratorTesterMixin, LabelledImages


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
    from cxrbench.data.synthetic import synthetic_cxr
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
    from cxrbench.data.transforms import CXRTransform
    from cxrbench.training import TrainOptions

    train_set = ImageFolder(tmp_path / "imgs", transform=CXRTransform(image_size=16))
    model = ldm.LDM.train(train_set, tiny_ldm(), tmp_path / "run", options=TrainOptions(steps=1, progress=False))
    assert model.label_bank[:, LABELS.index("Edema")].sum() > 0
    (tmp_path / "imgs" / "labels.csv").write_text("path,position\nimg_0000.png,upper left\n")
    with pytest.raises(DataError, match="unknown position"):
        ldm.with_positions(ImageFolder(tmp_path / "imgs"))


# ---------------------------------------------------------------------------------------------------------
# DiffuseVAE


def tiny_diffusevae(**kw):
    # vae_fraction 0.25: stage 2 from the second of four steps, so that a run of 2 steps resumed to 4
    # switches at the same step as 4 straight (the EMA test)
    kw = {"vae_fraction": 0.25, "label_bank_size": 8, **kw}
    return diffusevae.DiffuseVAEConfig(
        image_size=16, vae_channels=(8, 16), vae_z_dim=8, block_out_channels=(8, 16), layers_per_block=1,
        attention=False, norm_groups=8, num_train_timesteps=100, sample_steps=2, batch_size=4, **kw,
    )


def one_condition(n: int, name: str) -> torch.Tensor:
    y = torch.zeros(n, len(LABELS))
    y[:, LABELS.index(name)] = 1
    return y


class TestDiffuseVAE(GeneratorTesterMixin):
    name = "diffusevae"

    def config(self):
        return tiny_diffusevae(rep_lambda=0.5)

    def labels_for(self, n: int, seed: int = 0):
        # what it can be asked for: the white paper's conditions, one per image, or none of them
        g = torch.Generator().manual_seed(seed)
        y = torch.zeros(n, len(LABELS))
        pick = torch.randint(0, 4, (n,), generator=g)
        for i, k in enumerate(pick.tolist()):
            if k < 3:
                y[i, LABELS.index(diffusevae.PAPER_CONDITIONS[k])] = 1
        return y

    def test_labels(self):
        model = self.trained()
        a = model.sample(4, labels=one_condition(4, "Pneumonia"), seed=3)
        b = model.sample(4, labels=one_condition(4, "Effusion"), seed=3)
        assert not torch.equal(a, b), "the condition does not reach the images"
        with pytest.raises(UsageError, match="Atelectasis requested"):
            model.sample(2, labels=one_condition(2, "Atelectasis"), seed=0)
        with pytest.raises(UsageError):
            model.sample(2, labels=torch.zeros(2, 3), seed=0)
        drawn = model.draw_labels(64, seed=0)
        outside = [j for j in range(len(LABELS)) if LABELS[j] not in diffusevae.PAPER_CONDITIONS]
        assert drawn.shape == (64, len(LABELS)) and not drawn[:, outside].any()  # draws name only conditions
        assert drawn[:, [LABELS.index(c) for c in diffusevae.PAPER_CONDITIONS]].any()


def test_representation_term_changes_the_loss():
    images = LabelledImages(4, 16, seed=1).images
    runs = {}
    for lam in (0.0, 0.5):
        torch.manual_seed(0)
        model = diffusevae.DiffuseVAE(tiny_diffusevae(rep_lambda=lam))
        model.progress = 1.0  # stage 2: the DDPM trains
        opts = model.configure_optimizers()
        torch.manual_seed(1)
        logged = model.training_step(Batch(images, torch.zeros(4, len(LABELS))), opts, 0)
        runs[lam] = (logged, model.unet.conv_in.weight.detach().clone())
    (plain, w0), (rep, w1) = runs[0.0], runs[0.5]
    assert "rep" not in plain and rep["rep"] > 0
    assert plain["stage"] == rep["stage"] == 2
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
    from cxrbench.data.synthetic import synthetic_cxr
    from tests.conftest import write_pngs

    torch.manual_seed(0)
    model = diffusevae.DiffuseVAE(tiny_diffusevae())
    model.save_pretrained(tmp_path / "run")
    write_pngs(tmp_path / "src" / "sub", synthetic_cxr(3, 16, seed=0))
    argv = ["sample", str(tmp_path / "run"), "--reconstruct", str(tmp_path / "src"), "--out", str(tmp_path / "rec")]
    assert main(argv + ["--batch-size", "1"]) == 2  # conditional: the sources' labels are needed
    (tmp_path / "src" / "labels.csv").write_text(
        "path,Pneumonia,Effusion,No Finding\nsub/img_0000.png,1,0,0\nsub/img_0001.png,0,1,0\nsub/img_0002.png,0,0,1\n")
    assert main(argv + ["--batch-size", "1"]) == 0
    man = pd.read_csv(tmp_path / "rec" / "manifest.csv")
    assert sorted(man["source"]) == [f"sub/img_{i:04d}.png" for i in range(3)]
    from cxrbench.data import ImageFolder, load_image
    from cxrbench.data.transforms import CXRTransform

    # each written image is the model's reconstruction of the source it names
    folder = ImageFolder(tmp_path / "src", transform=CXRTransform(image_size=16))
    for _, row in man.iterrows():
        image, labels = folder[folder.ids.index(row["source"])]
        want = model.reconstruct(image[None], labels=labels[None], seed=int(row["seed"]))[0, 0].numpy()
        got = load_image(tmp_path / "rec" / row["path"])
        assert abs(got - want).max() <= 1 / 255 + 1e-6
        other = model.reconstruct(image[None], labels=torch.zeros(1, len(LABELS)), seed=int(row["seed"]))
        assert abs(got - other[0, 0].numpy()).max() > 1 / 255  # under its own condition, not another


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


# ---------------------------------------------------------------------------------------------------------
# shared by the three: EMA weights, gradient clipping, prediction types

DIFFUSION = {"ddpm": tiny_ddpm, "diffusevae": tiny_diffusevae, "ldm": tiny_ldm}


def _build(name, **kw):
    from cxrbench.registry import GENERATORS

    torch.manual_seed(0)
    return GENERATORS.get(name)(DIFFUSION[name](**kw))


def _sample(model, n=2, seed=0):
    labels = torch.zeros(n, len(LABELS)) if model.conditional else None
    return model.sample(n, labels=labels, seed=seed)


@pytest.mark.parametrize("name", sorted(DIFFUSION))
def test_ema_is_saved_sampled_and_resumed_exactly(tmp_path, name):
    import copy

    from cxrbench.registry import GENERATORS
    from cxrbench.training import TrainOptions

    cls, cfg = GENERATORS.get(name), DIFFUSION[name]()
    ds = LabelledImages(8, 16, seed=0)
    opts = dict(progress=False, checkpoint_every=100, seed=1)
    straight = cls.train(ds, cfg, tmp_path / "a", options=TrainOptions(steps=4, **opts))
    cls.train(ds, cfg, tmp_path / "b", options=TrainOptions(steps=2, **opts))
    resumed = cls.train(ds, cfg, tmp_path / "b", options=TrainOptions(steps=4, **opts))
    sa, sb = straight.state_dict(), resumed.state_dict()
    ema_keys = [k for k in sa if k.startswith("ema.averaged.")]
    assert ema_keys and int(sa["ema.steps"]) == 4
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the resumed average is the uninterrupted one
    # the average is not the trained weights ...
    assert any(not torch.equal(sa[k], sa[k.replace("ema.averaged.", "")]) for k in ema_keys)
    # ... and is what sample uses (and the saved folder holds): a copy whose live weights are the average,
    # without an EMA, samples the same images; a copy with the trained weights samples others
    loaded = cls.from_pretrained(tmp_path / "a")
    averaged, raw = copy.deepcopy(straight), copy.deepcopy(straight)
    for m in (averaged, raw):
        m.ema = None
    averaged.load_state_dict({k.replace("ema.averaged.", ""): v for k, v in sa.items() if k in ema_keys},
                             strict=False)
    before = {k: v.clone() for k, v in sa.items()}
    want = _sample(straight)
    assert torch.equal(want, _sample(averaged)) and torch.equal(want, _sample(loaded))
    assert not torch.equal(want, _sample(raw))
    after = straight.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # sampling put the trained weights back


@pytest.mark.parametrize("name", sorted(DIFFUSION))
def test_model_folder_saved_without_ema_loads_and_samples_its_weights(tmp_path, name):
    import json

    from cxrbench.registry import GENERATORS

    model = _build(name, ema_decay=0.0)  # a folder as saved before the EMA existed: no ema.* weights
    assert model.ema is None and not any(k.startswith("ema.") for k in model.state_dict())
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    for key in ("ema_decay", "ema_power", "grad_clip"):
        meta["config"].pop(key)
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = GENERATORS.get(name).from_pretrained(tmp_path)
    assert loaded.ema is not None  # today's default, its average starting at the saved weights
    assert torch.equal(_sample(model), _sample(loaded))


@pytest.mark.parametrize("name", sorted(DIFFUSION))
def test_gradients_are_clipped_to_grad_clip(name):
    batch = Batch(LabelledImages(4, 16, seed=1).images, LabelledImages(4, 16, seed=1).labels)
    for clip in (0.0, 1e-3):
        model = _build(name, grad_clip=clip)
        if model.conditional:
            model.on_train_start(LabelledImages(8, 16, seed=5))
        logged = model.training_step(batch, model.configure_optimizers(), 0)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        if clip:
            assert logged["grad_norm"] > 10 * clip and norm == pytest.approx(clip, rel=1e-4)
        else:
            assert norm == pytest.approx(logged["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_denoise_loss_reads_the_prediction_type(kind):
    # an oracle network that predicts exactly the scheduler's target has zero loss and recovers x0
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=100, prediction_type=kind)
    x0 = LabelledImages(3, 8, seed=0).images * 2 - 1
    state = {}

    def oracle(xt, t):
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        state["t"] = t
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]

    torch.manual_seed(0)
    loss, x0_hat, t = ddpm.denoise_loss(oracle, x0, sched)
    assert torch.equal(t, state["t"])
    assert loss.item() < 1e-8 and torch.allclose(x0_hat, x0, atol=1e-4)
    torch.manual_seed(0)
    wrong, _, _ = ddpm.denoise_loss(lambda xt, t: oracle(xt, t) + 0.1, x0, sched)
    assert wrong.item() == pytest.approx(0.01, rel=1e-4)


# ---------------------------------------------------------------------------------------------------------
# the Stable Diffusion fine-tune path, on a tiny SD-style folder saved with diffusers / transformers


def tiny_sd_folder(root, prediction_type="v_prediction"):
    """vae/, unet/, text_encoder/, tokenizer/, scheduler/ as a diffusers Stable Diffusion folder has them
    (scheduler: SD's PNDM config with its scaled-linear betas), random weights, 16 px."""
    import json
    import string

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=8, sample_size=16).save_pretrained(root / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=8).save_pretrained(root / "unet")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in list(string.ascii_lowercase) + [",", "-"]:  # characters only (no merges): every word spelt out
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                               model_max_length=24).save_pretrained(tok_dir)
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=24,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    transformers.CLIPTextModel(config).save_pretrained(root / "text_encoder")
    PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type=prediction_type, skip_prk_steps=True, steps_offset=1,
                  set_alpha_to_one=False).save_pretrained(root / "scheduler")
    return root


def test_ldm_stable_diffusion_path_uses_the_folders_scheduler(tmp_path):
    from diffusers import PNDMScheduler

    from cxrbench.training import TrainOptions

    folder = tiny_sd_folder(tmp_path / "sd")
    cfg = ldm.LDMConfig(image_size=16, pretrained_dir=str(folder), sample_steps=2, batch_size=4, label_bank_size=8)
    model = ldm.LDM(cfg)
    saved = PNDMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert torch.equal(model.noise_scheduler.betas, saved.betas)
    assert not torch.equal(model.noise_scheduler.betas, ldm.make_schedulers(cfg, clip=False)[0].betas)
    for sched in (model.noise_scheduler, model.sampler):
        assert sched.config.prediction_type == "v_prediction" and not sched.config.clip_sample
    assert model.sampler.config.timestep_spacing == "trailing"

    # the fine-tune trains the UNet only (its EMA too), and the folder round-trips
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("autoencoder.", "text_encoder."))}
    trained = ldm.LDM.train(LabelledImages(8, 16, seed=0), cfg, tmp_path / "run",
                            options=TrainOptions(steps=2, progress=False))
    sd = trained.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in frozen.items())
    assert [k for k in sd if k.startswith("ema.averaged.")] and not any(
        k.startswith("ema.averaged.text_encoder") for k in sd)
    loaded = ldm.LDM.from_pretrained(tmp_path / "run")
    y = torch.zeros(2, len(LABELS))
    x = trained.sample(2, labels=y, seed=0)
    assert x.shape == (2, 1, 16, 16) and torch.equal(x, loaded.sample(2, labels=y, seed=0))
    import shutil

    shutil.rmtree(folder / "scheduler")
    with pytest.raises(WeightsError, match="scheduler: missing"):
        ldm.LDM(cfg)


# ---------------------------------------------------------------------------------------------------------
# DiffuseVAE: the condition, the representation term's timesteps, the fine-tune stage


def test_diffusevae_conditions_on_a_posterior_sample():
    torch.manual_seed(0)
    model = diffusevae.DiffuseVAE(tiny_diffusevae())
    x = LabelledImages(4, 16, seed=1).images
    y = torch.eye(3)[[0, 1, 2, 0]]
    torch.manual_seed(3)
    a = model.condition(x, y)
    torch.manual_seed(3)
    mu, logvar = model.vae.encode(x, y)
    want = model.vae.decode(mu + torch.randn_like(mu) * (0.5 * logvar).exp(), y) * 2 - 1
    assert torch.equal(a, want)
    assert not torch.equal(a, model.condition(x, y))  # a fresh sample each call
    assert not torch.allclose(a, model.vae.decode(mu, y) * 2 - 1)


def test_representation_term_ignores_large_timesteps():
    f = diffusevae.load_representation("random")
    images = LabelledImages(4, 32, seed=0).images
    x0_hat = images * 2 - 1 + 0.3 * torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 250, 400, 900])
    base = diffusevae.representation_loss(f, images, x0_hat, t, 300)
    changed_late = x0_hat.clone()
    changed_late[2:] = -1  # items at t >= 300: no effect
    assert diffusevae.representation_loss(f, images, changed_late, t, 300) == base
    changed_early = x0_hat.clone()
    changed_early[1] = -1
    assert diffusevae.representation_loss(f, images, changed_early, t, 300) != base
    # the mean over the kept items only
    one = [diffusevae.representation_loss(f, images[i:i + 1], x0_hat[i:i + 1], t[i:i + 1], 300) for i in (0, 1)]
    assert base.item() == pytest.approx((one[0].item() + one[1].item()) / 2, rel=1e-5)
    assert diffusevae.representation_loss(f, images, x0_hat, t, 5) == 0


def test_diffusevae_fine_tune_stage_starts_from_the_first_stage(tmp_path):
    from cxrbench.training import TrainOptions

    ds = LabelledImages(8, 16, seed=0)
    opts = TrainOptions(steps=2, progress=False)
    first = diffusevae.DiffuseVAE.train(ds, tiny_diffusevae(), tmp_path / "stage1", options=opts)
    second_cfg = tiny_diffusevae(rep_lambda=0.5, init_from=str(tmp_path / "stage1"))
    with pytest.raises(UsageError, match="different config"):  # resuming the first run refuses the change
        diffusevae.DiffuseVAE.train(ds, second_cfg, tmp_path / "stage1", options=TrainOptions(steps=3, progress=False))
    torch.manual_seed(0)
    second = diffusevae.DiffuseVAE(second_cfg)
    second.on_train_start(ds)
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k != "ema.steps")
    assert int(s1["ema.steps"]) == 2 and int(s2["ema.steps"]) == 0  # the average follows the fine-tune
    trained = diffusevae.DiffuseVAE.train(ds, second_cfg, tmp_path / "stage2", options=opts)
    w = trained.unet.conv_in.weight
    assert not torch.equal(w, s1["unet.conv_in.weight"])
    assert torch.allclose(w, s1["unet.conv_in.weight"], atol=0.05)  # two small steps from stage 1, not from init
    bad = dataclasses.replace(tiny_diffusevae(), vae_z_dim=4, init_from=str(tmp_path / "stage1"))
    with pytest.raises(UsageError, match="init_from .*stage1.*same architecture"):
        diffusevae.DiffuseVAE.train(ds, bad, tmp_path / "bad", options=opts)


# ---------------------------------------------------------------------------------------------------------
# DiffuseVAE: the white paper's single conditions and staged training


def test_diffusevae_condition_reaches_the_vae_and_the_unet():
    torch.manual_seed(0)
    model = diffusevae.DiffuseVAE(tiny_diffusevae()).eval()
    assert model.config.conditions == ("Pneumonia", "Effusion", "No Finding")
    pneumonia, effusion = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]])
    z = torch.randn(1, 8)
    assert not torch.equal(model.vae.decode(z, pneumonia), model.vae.decode(z, effusion))
    xt, cond, t = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16), torch.tensor([50])
    assert not torch.equal(model.eps(xt, t, cond, pneumonia), model.eps(xt, t, cond, effusion))
    # the 15-column request of the Generator contract maps onto the condition columns
    assert torch.equal(model.condition_vector(one_condition(1, "Effusion")), effusion)
    assert torch.equal(model.condition_vector(one_condition(1, "Atelectasis")), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown label 'Flu'"):
        tiny_diffusevae(conditions=("Pneumonia", "Flu"))
    assert tiny_diffusevae(conditions=("pleural effusion",)).conditions == ("Effusion",)


def test_sample_cli_per_condition_writes_the_condition_to_the_manifest(tmp_path):
    import pandas as pd

    from cxrbench.cli import main
    from cxrbench.data import load_image

    torch.manual_seed(0)
    model = diffusevae.DiffuseVAE(tiny_diffusevae()).eval()
    model.save_pretrained(tmp_path / "run")
    images = {}
    for name in ("Pneumonia", "Effusion", "No Finding"):
        out = tmp_path / name.replace(" ", "-")
        assert main(["sample", str(tmp_path / "run"), "--n", "3", "--labels", name, "--out", str(out)]) == 0
        man = pd.read_csv(out / "manifest.csv")
        assert (man[name] == 1).all()
        assert (man[[c for c in LABELS if c != name]] == 0).all().all()  # that condition alone
        want = model.sample(3, labels=one_condition(3, name), seed=int(man["seed"][0]))
        got = torch.stack([torch.from_numpy(load_image(out / p)) for p in man["path"]])
        assert (got - want[:, 0]).abs().max() <= 1 / 255 + 1e-6
        images[name] = got
    assert not torch.equal(images["Pneumonia"], images["Effusion"])  # same seed, another condition
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--labels", "Atelectasis",
                 "--out", str(tmp_path / "bad")]) == 2


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_diffusevae_trains_the_vae_then_the_ddpm_on_the_frozen_vae():
    torch.manual_seed(0)
    model = diffusevae.DiffuseVAE(tiny_diffusevae(vae_fraction=0.5))
    ds = LabelledImages(4, 16, seed=1)
    batch = Batch(ds.images, ds.labels)
    opts = model.configure_optimizers()
    model.train()
    # stage 1: the VAE alone
    unet0, vae0 = _state(model.unet), _state(model.vae)
    model.progress = 0.2
    logged = model.training_step(batch, opts, 0)
    assert logged["stage"] == 1 and "diffusion" not in logged and "vae_rec" in logged
    assert _same(unet0, _state(model.unet)) and not _same(vae0, _state(model.vae))
    assert all(p.grad is None for p in model.unet.parameters())
    # stage 2 from half the budget: the VAE takes its average and stays frozen, the DDPM trains
    for step, progress in ((1, 0.5), (2, 0.7), (3, 0.9)):
        model.progress = progress
        logged = model.training_step(batch, opts, step)
        assert logged["stage"] == 2 and "vae_rec" not in logged and "diffusion" in logged
        if step == 1:
            assert _same(_state(model.vae), _state(model.ema.averaged["vae"]))
            frozen, unet1 = _state(model.vae), _state(model.unet)
    assert _same(frozen, _state(model.vae))  # weights and BatchNorm statistics
    assert all(p.grad is None for p in model.vae.parameters()) and not model.vae.training
    assert not _same(unet1, _state(model.unet))
    assert _same(frozen, _state(model.ema.averaged["vae"]))  # what samples is the frozen VAE
    model.progress = 0.1  # a resumed call with a longer budget does not go back to stage 1
    assert model.training_step(batch, opts, 4)["stage"] == 2


def test_diffusevae_stages_follow_the_trainers_budget(tmp_path):
    import pandas as pd

    from cxrbench.training import TrainOptions

    ds = LabelledImages(8, 16, seed=0)
    model = diffusevae.DiffuseVAE.train(ds, tiny_diffusevae(vae_fraction=0.5), tmp_path,
                                        options=TrainOptions(steps=6, progress=False, log_every=1))
    log = pd.read_csv(tmp_path / "losses.csv")
    assert log["stage"].tolist() == [1, 1, 1, 2, 2, 2]
    assert log["diffusion"].isna().tolist() == [True] * 3 + [False] * 3
    assert int(model.stage) == 2
    # the fine-tune run (init_from) trains the DDPM only, from its first step
    second = diffusevae.DiffuseVAE.train(ds, tiny_diffusevae(vae_fraction=0.5, init_from=str(tmp_path)),
                                         tmp_path / "fine", options=TrainOptions(steps=2, progress=False, log_every=1))
    assert pd.read_csv(tmp_path / "fine" / "losses.csv")["stage"].tolist() == [2, 2]
    assert _same(_state(second.vae), _state(model.vae))


def test_diffusevae_folder_saved_before_conditions_loads_unconditional(tmp_path):
    import json

    torch.manual_seed(0)
    old = diffusevae.DiffuseVAE(tiny_diffusevae(conditions=(), vae_fraction=0.0))
    old.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    for key in ("conditions", "vae_fraction", "label_bank_size"):
        meta["config"].pop(key)
    (tmp_path / "config.json").write_text(json.dumps(meta))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    del state["stage"]
    torch.save(state, tmp_path / "model.pt")
    loaded = diffusevae.DiffuseVAE.from_pretrained(tmp_path)
    assert not loaded.conditional and loaded.config.vae_fraction == 0
    assert torch.equal(loaded.sample(2, seed=0), old.eval().sample(2, seed=0))
    with pytest.raises(UsageError, match="unconditional"):
        loaded.sample(2, labels=one_condition(2, "Pneumonia"))
