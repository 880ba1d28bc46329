"""Seed 003/004 baselines: the shared generator contract on tiny configs, parameter counts at the seed
configurations (built, counted, no forward pass), and model-specific identities."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines import gmvae, lsgan, pggan, vae
from baselines.trainer import Batch
from cxrbench.errors import UsageError, WeightsError

from ..generator_contract import GeneratorTesterMixin, LabelledImages


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# the contract, per registered baseline


class TestVAE(GeneratorTesterMixin):
    name = "vae"

    def config(self):
        return vae.VAEConfig(image_size=16, channels=(8, 16), z_dim=8, batch_size=4)


class TestGMVAE(GeneratorTesterMixin):
    name = "gmvae"

    def config(self):
        return gmvae.GMVAEConfig(
            image_size=16, encoder="conv", conv_channels=(8, 16), transition=True, transition_channels=8,
            z_dim=8, k=3, decoder="decoder1", batch_size=4,
        )


class TestFSGMVAE(GeneratorTesterMixin):
    name = "fs-gmvae"

    def config(self):
        return gmvae.FSGMVAEConfig(
            image_size=16, encoder="conv", conv_channels=(8, 16), transition=False, z_dim=8, k=3,
            decoder="linear", linear_hidden=32, batch_size=4, label_bank_size=8,
        )


class TestLSGAN(GeneratorTesterMixin):
    name = "lsgan"

    def config(self):
        return lsgan.LSGANConfig(image_size=16, z_dim=8, width=8, max_channels=16, batch_size=4)


class TestPGGAN(GeneratorTesterMixin):
    name = "pggan"
    train_steps = 4  # phase_steps=1: level 0, fade 8 px, stable 8 px, fade 16 px

    def config(self):
        return pggan.PGGANConfig(
            image_size=16, z_dim=8, fmap_base=32, fmap_max=16, phase_steps=1, batch_size=4, ema_decay=0.5
        )


class TestPGGANConditional(TestPGGAN):
    def config(self):
        return pggan.PGGANConfig(
            image_size=16, z_dim=8, fmap_base=32, fmap_max=16, phase_steps=1, batch_size=4, ema_decay=0.5,
            conditional=True, label_bank_size=8,
        )


# ---------------------------------------------------------------------------------------------------------
# parameter counts at the seed configurations (seed 003 Table 5)


def test_lsgan_parameter_counts_match_seed_table5():
    model = lsgan.LSGAN(lsgan.LSGANConfig())  # z = 100, 128 px, no conv biases
    assert count(model.discriminator) == 2_795_904
    assert count(model.generator) == 3_606_976
    assert count(model) == 6_402_880
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


def test_vae_parameter_counts_match_table5_exactly():
    # Kumar & Triana, Table 5: encoder 4,711,648; mean and logvar 8,389,632 each; decoder 11,184,033;
    # total 32,674,945. The defaults are the report's configuration (128 px, z = 1024).
    model = vae.VAE(vae.VAEConfig())
    assert model.config.z_dim == 1024 and model.config.image_size == 128
    assert count(model.encoder) == 4_711_648
    assert count(model.fc_mu) == count(model.fc_logvar) == 8_389_632
    assert count(model.decoder) == 11_184_033
    assert count(model) == 32_674_945
    assert count(model.encoder) + count(model.fc_mu) + count(model.fc_logvar) + count(model.decoder) == count(model)


def test_gmvae_parameter_counts_match_seed_table5():
    # Table 5 counts convolution weights only; the tables' biases are listed separately (Tables 2-3)
    def conv_weights(dec):
        return sum(m.weight.numel() for m in dec.convs if isinstance(m, nn.ConvTranspose2d))

    def conv_biases(dec):
        return sum(m.bias.numel() for m in dec.convs if isinstance(m, nn.ConvTranspose2d))

    cfg1 = gmvae.GMVAEConfig(**gmvae.VARIANTS["GMVAE V4"])
    dec1 = gmvae.Decoder(cfg1, 1)  # the z -> map layer is not counted; keep it small
    assert conv_weights(dec1) == 1_920 and conv_biases(dec1) == 6 + 3 + 3 + 3
    assert dec1.shape == (14, 14, 14)  # Table 2's input volume 14 x 14 x 14
    cfg2 = gmvae.GMVAEConfig(**gmvae.VARIANTS["GMVAE V5"])
    dec2 = gmvae.Decoder(cfg2, 1)
    assert conv_weights(dec2) == 172_800 and conv_biases(dec2) == 64 + 32 + 16 + 3
    assert dec2.shape == (128, 14, 14)  # Table 3's input volume

    vgg = gmvae.FeatureEncoder(gmvae.GMVAEConfig(**gmvae.VARIANTS["GMVAE V8"]))
    assert count(vgg.features) == 14_714_688  # "VGG16 Features Encoder"
    # "Total: 14,716,608 - 14,887,488": the features plus either decoder's convolution weights
    assert count(vgg.features) + conv_weights(dec1) == 14_716_608
    assert count(vgg.features) + conv_weights(dec2) == 14_887_488
    # transition: 1x1 conv 512 -> 300, BatchNorm(300), Linear(300 -> 2 z)
    assert count(vgg.transition) == 512 * 300 + 300 + 2 * 300
    assert count(vgg.head) == 300 * 2 * 2000 + 2 * 2000

    dense = gmvae.FeatureEncoder(gmvae.GMVAEConfig(**gmvae.VARIANTS["GMVAE V6"]))
    assert count(dense.features) == 6_953_856  # torchvision DenseNet121 features
    assert dense.transition[0].in_channels == 1024


def test_gmvae_variants_build_at_224():
    v3 = gmvae.GMVAEConfig(**gmvae.VARIANTS["GMVAE V3"])
    enc = gmvae.FeatureEncoder(v3)
    assert enc.head.in_features == 512 * 7 * 7  # no transition: VGG16's 512 x 7 x 7 map, flattened
    assert enc.head.out_features == 2 * 1000  # mean and variance of z
    x = gmvae.Decoder(v3, 1000)(torch.randn(2, 1000))
    assert x.shape == (2, 3, 224, 224) and x.min() >= 0 and x.max() <= 1
    v6 = gmvae.FeatureEncoder(gmvae.GMVAEConfig(**gmvae.VARIANTS["GMVAE V6"]))
    qm, qv = v6(torch.rand(1, 1, 224, 224))
    assert qm.shape == qv.shape == (1, 2000) and (qv > 0).all()


# ---------------------------------------------------------------------------------------------------------
# VAE / GMVAE identities


def test_vae_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    want = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(vae.gaussian_kl(mu, logvar), want, atol=1e-5)


def test_gmvae_mixture_log_density_matches_torch_distributions():
    torch.manual_seed(0)
    k, d = 4, 6
    m, v = torch.randn(k, d), torch.rand(k, d) + 0.1
    z = torch.randn(9, d)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(k)),
        torch.distributions.Independent(torch.distributions.Normal(m, v.sqrt()), 1),
    )
    assert torch.allclose(gmvae.log_normal_mixture(z, m, v), mix.log_prob(z), atol=1e-4)
    # one component: the mixture is that Gaussian
    assert torch.allclose(gmvae.log_normal_mixture(z, m[:1], v[:1]), gmvae.log_normal(z, m[0], v[0]), atol=1e-5)


def test_gmvae_encoder_weights_from_a_local_file_only(tmp_path):
    cfg = gmvae.GMVAEConfig(image_size=32, encoder="densenet121", transition=True, z_dim=4, k=2,
                            decoder="decoder1", encoder_weights=str(tmp_path / "missing.pth"))
    model = gmvae.GMVAE(cfg)
    with pytest.raises(WeightsError, match="missing.pth"):
        model.on_train_start(None)
    # a torchvision DenseNet121 file: whole-model keys, and the old "norm.1" spelling torchvision remaps
    torch.manual_seed(1)
    source = gmvae.FeatureEncoder(cfg).features[0]
    state = {}
    for k, v in source.state_dict().items():
        k = k.replace("denselayer1.norm1", "denselayer1.norm.1").replace("denselayer1.conv2", "denselayer1.conv.2")
        state[f"features.{k}"] = v
    state["classifier.weight"] = torch.zeros(1000, 1024)
    assert any("norm.1" in k for k in state)
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)
    model = gmvae.GMVAE(gmvae.GMVAEConfig(**{**vars(cfg), "encoder_weights": str(path)}))
    model.on_train_start(None)
    got, want = model.encoder.features[0].state_dict(), source.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="not a torchvision densenet121"):
        model.on_train_start(None)


def test_fs_gmvae_label_bank_holds_training_labels():
    cfg = TestFSGMVAE().config()
    model = gmvae.FSGMVAE(cfg)
    ds = LabelledImages(6, cfg.image_size, seed=2)
    model.on_train_start(ds)
    rows = {tuple(r.tolist()) for r in ds.labels}
    assert all(tuple(r.tolist()) in rows for r in model.draw_labels(20, seed=0))
    assert torch.equal(model.draw_labels(5, seed=1), model.draw_labels(5, seed=1))


def test_conditional_model_without_labels_in_data_is_refused():
    from cxrbench.errors import DataError

    cfg = TestFSGMVAE().config()
    with pytest.raises(DataError, match="labels"):
        gmvae.FSGMVAE(cfg).on_train_start([(torch.rand(1, 16, 16), torch.full((15,), float("nan")))] * 3)


# ---------------------------------------------------------------------------------------------------------
# PGGAN identities


def test_pggan_schedule_grows_to_full_resolution():
    model = pggan.PGGAN(pggan.PGGANConfig(image_size=32, fmap_base=32, fmap_max=16, z_dim=8, phase_steps=10))
    levels = [model.schedule(s) for s in range(80)]
    assert levels[0] == (0, 1.0)
    assert all(b[0] >= a[0] for a, b in zip(levels, levels[1:]))  # never shrinks
    assert all(0.0 <= a <= 1.0 for _, a in levels)
    first_full = next(s for s, (lv, a) in enumerate(levels) if lv == 3 and a == 1.0)
    assert first_full == 2 * 3 * 10  # stabilise 4 px, then fade in + stabilise each of 3 levels
    assert levels[15] == (1, 0.5)  # halfway through the first fade-in


def _pggan_budget_run(tmp_path, options):
    import pandas as pd

    from cxrbench.training import TrainOptions

    cfg = pggan.PGGANConfig(image_size=16, fmap_base=32, fmap_max=16, z_dim=8, batch_size=4, ema_decay=0.5)
    assert cfg.phase_steps == 0  # the default: phases laid out over the budget
    ds = LabelledImages(8, 16, seed=0)
    model = pggan.PGGAN.train(ds, cfg, tmp_path, options=TrainOptions(progress=False, log_every=1, **options))
    log = pd.read_csv(tmp_path / "losses.csv")
    return model, list(zip(log["level"].astype(int), log["alpha"]))


def test_pggan_short_step_budget_ends_at_the_final_level_with_alpha_1(tmp_path):
    model, sched = _pggan_budget_run(tmp_path, {"steps": 12})
    assert len(sched) == 12
    assert (int(model.level), float(model.alpha)) == (2, 1.0)  # what sample() renders: the final level
    assert sched[-3:] == [(2, 1.0)] * 3  # the last quarter stabilises at full resolution
    assert sched[0] == (0, 1.0) and any(lv == 1 and a < 1 for lv, a in sched)  # it did grow through level 1
    assert all(b >= a for a, b in zip(sched, sched[1:]))  # (level, alpha) never goes back
    assert pggan.PGGAN.from_pretrained(tmp_path).sample(2, seed=0).shape == (2, 1, 16, 16)


def test_pggan_cpu_budget_ends_at_the_final_level_with_alpha_1(tmp_path, monkeypatch):
    # a 15-CPU-minute budget with a step count nobody knows in advance (the PGGAN-64 that was scored at
    # alpha 0.29): a fake CPU clock, 0.1 s per reading, makes the run end after a dozen steps
    from baselines import trainer

    clock = iter(range(10**6))
    monkeypatch.setattr(trainer.time, "process_time", lambda: 0.1 * next(clock))
    model, sched = _pggan_budget_run(tmp_path, {"steps": 10**6, "cpu_minutes": 0.05})
    assert 5 <= len(sched) < 100
    assert (int(model.level), float(model.alpha)) == (2, 1.0)
    final = sum(1 for s in sched if s == (2, 1.0))
    assert final >= 0.25 * len(sched) - 1  # stabilisation time at full resolution before the budget ended


def test_pggan_budget_schedule_lays_out_equal_phases():
    model = pggan.PGGAN(pggan.PGGANConfig(image_size=32, fmap_base=32, fmap_max=16, z_dim=8))
    assert model.schedule_at(0.0) == (0, 1.0)
    # 3 levels: 6 phases of 0.125 in the first 0.75 of the budget
    assert model.schedule_at(0.125 + 0.0625) == (1, pytest.approx(0.5))  # halfway through the first fade-in
    assert model.schedule_at(0.3) == (1, 1.0)
    assert model.schedule_at(0.749)[0] == 3 and model.schedule_at(0.749)[1] < 1
    assert model.schedule_at(0.75) == model.schedule_at(1.0) == (3, 1.0)
    with pytest.raises(ValueError, match="final_fraction"):
        pggan.PGGANConfig(final_fraction=1.0)


def test_pggan_fade_in_starts_as_the_level_below():
    torch.manual_seed(0)
    cfg = pggan.PGGANConfig(image_size=16, fmap_base=32, fmap_max=16, z_dim=8)
    G, D = pggan.PGGenerator(cfg, 0), pggan.PGDiscriminator(cfg, 0)
    z = torch.randn(4, 8)
    for lv in (1, 2):
        # alpha = 0: the new level contributes nothing yet
        low = F.interpolate(G(z, lv - 1, 1.0), scale_factor=2, mode="nearest")
        assert torch.allclose(G(z, lv, 0.0), low, atol=1e-6)
        x = torch.randn(4, 1, 4 * 2**lv, 4 * 2**lv)
        assert torch.allclose(D(x, lv, 0.0), D(F.avg_pool2d(x, 2), lv - 1, 1.0), atol=1e-5)
        assert not torch.allclose(G(z, lv, 1.0), low, atol=1e-3)


def test_minibatch_stddev_feature_is_the_group_std():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2)
    y = pggan.minibatch_stddev(x, group=4)
    assert y.shape == (8, 4, 2, 2)
    groups = x.view(4, 2, 3, 2, 2)  # member j of every group shares index j % 2
    want = groups.std(dim=0, unbiased=False).mean(dim=(1, 2, 3))
    assert torch.allclose(y[:, 3, 0, 0], want.repeat(4), atol=1e-5)
    assert torch.equal(y[:, :3], x)


def test_pggan_pixel_norm_gives_unit_mean_square():
    x = torch.randn(5, 16, 3, 3) * 7
    assert torch.allclose(pggan.pixel_norm(x).pow(2).mean(dim=1), torch.ones(5, 3, 3), atol=1e-4)


class BrightnessClassifier(nn.Module):
    """p("Bright") = sigmoid(20 (mean intensity - 0.5)): a differentiable stand-in for the XRV classifier."""

    feature_names = ["Dark", "Bright"]

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.sigmoid(-20 * (m - 0.5)), torch.sigmoid(20 * (m - 0.5))], dim=1)


def test_pggan_latent_optimisation_raises_the_class_probability():
    torch.manual_seed(0)
    cfg = pggan.PGGANConfig(image_size=16, fmap_base=32, fmap_max=16, z_dim=8, ema_decay=0.0)
    model = pggan.PGGAN(cfg).eval()
    model.level.fill_(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf = BrightnessClassifier()
    plain = model.sample(6, seed=0)
    for target in ("Bright", "dark"):
        images, info = model.optimize_toward(target, 6, classifier=clf, steps=30, lr=0.1, seed=0)
        assert images.shape == plain.shape and images.min() >= 0 and images.max() <= 1
        assert info["log_p_end"] > info["log_p_start"]
        sign = 1 if target == "Bright" else -1
        assert sign * (images.mean() - plain.mean()) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # only z moved
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(UsageError, match="Dark, Bright"):
        model.optimize_toward("Pneumonia", 2, classifier=clf, steps=1)


def test_pggan_samples_before_full_resolution_have_the_target_size():
    cfg = pggan.PGGANConfig(image_size=32, fmap_base=32, fmap_max=16, z_dim=8, ema_decay=0.0)
    model = pggan.PGGAN(cfg).eval()
    x = model.sample(2, seed=0)  # level 0: 4 px upsampled
    assert x.shape == (2, 1, 32, 32)
    assert torch.equal(x[:, :, ::8, ::8].repeat_interleave(8, 2).repeat_interleave(8, 3), x)


def test_lsgan_takes_three_generator_steps_per_discriminator_step():
    cfg = TestLSGAN().config()
    model = lsgan.LSGAN(cfg)
    opts = model.configure_optimizers()
    model.training_step(TestLSGAN().batch(), opts, 0)
    g_state = opts["g"].state[next(iter(model.generator.parameters()))]
    d_state = opts["d"].state[next(iter(model.discriminator.parameters()))]
    assert int(g_state["step"]) == 3 and int(d_state["step"]) == 1
    assert math.isclose(opts["g"].param_groups[0]["lr"], 2e-4) and opts["g"].param_groups[0]["betas"][0] == 0.5


def _newest_torgb_moved(ema_decay, steps_per_phase=10):
    """Train an 8 px PGGAN through level 1 (fade-in + as long again stable); how far g_ema's newest toRGB has
    moved from its initial value toward the trained generator's: 1 - |ema - G| / |init - G|."""
    cfg = pggan.PGGANConfig(image_size=8, z_dim=8, fmap_base=32, fmap_max=16, phase_steps=steps_per_phase,
                            batch_size=4, ema_decay=ema_decay)
    torch.manual_seed(0)
    model = pggan.PGGAN(cfg)
    init = model.generator.to_rgb[1].weight.detach().clone()
    opts = model.configure_optimizers()
    images = LabelledImages(8, 8, seed=0).images
    for step in range(3 * steps_per_phase):
        model.training_step(Batch(images[4 * (step % 2):][:4], torch.zeros(4, 15)), opts, step)
    trained, ema = model.generator.to_rgb[1].weight.detach(), model.g_ema.to_rgb[1].weight
    return 1 - ((ema - trained).norm() / (init - trained).norm()).item()


def test_pggan_ema_follows_a_short_level():
    # the default half-life ramps up within each level; a fixed 0.999 leaves the new block at its init
    assert _newest_torgb_moved(None) > 0.8
    assert _newest_torgb_moved(0.999) < 0.2


def test_pggan_ema_half_life_is_karras_10k_images_once_ramped_up():
    cfg = pggan.PGGANConfig(image_size=8, phase_steps=1000, batch_size=16)
    model = pggan.PGGAN.__new__(pggan.PGGAN)  # ema_beta reads only the config and the schedule
    model.config, model.levels = cfg, 1
    assert model.ema_beta(10**6) == pytest.approx(0.5 ** (16 / 10_000))  # ~0.999, Karras's G_smoothing_kimg
    # 100 steps into level 1 (which starts at step 1000): half-life 5% of its 1600 images
    assert model.ema_beta(1099) == pytest.approx(0.5 ** (16 / (0.05 * 1600)))
    assert pggan.PGGAN(dataclasses.replace(cfg, z_dim=8, fmap_base=32, fmap_max=16, ema_kimg=0.0)).g_ema is None
    model.config = dataclasses.replace(cfg, ema_decay=0.999)  # a folder saved before ema_kimg: its fixed decay
    assert model.ema_beta(5) == model.ema_beta(10**6) == 0.999


@pytest.mark.parametrize("name", ["vae", "gmvae"])
def test_summed_reconstruction_is_the_mean_scaled_by_the_pixel_count(name):
    # "sum" with beta b is H*W times "mean" with beta b / (H*W): the seed's effective KL weight is beta*H*W
    test = {"vae": TestVAE, "gmvae": TestGMVAE}[name]()
    x = LabelledImages(4, 16, seed=1).images
    pixels = 16 * 16
    out = {}
    for rec, beta in (("mean", 0.002), ("sum", 0.002 * pixels)):
        torch.manual_seed(0)
        model = test.cls(dataclasses.replace(test.config(), reconstruction=rec, beta=beta))
        torch.manual_seed(1)
        out[rec] = model.loss(x)
    assert out["sum"]["loss"].item() == pytest.approx(pixels * out["mean"]["loss"].item(), rel=1e-5)
    assert out["sum"]["kl"].item() == pytest.approx(out["mean"]["kl"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="mean or sum"):
        dataclasses.replace(test.config(), reconstruction="total")


def test_fs_gmvae_encoder_sees_the_labels_and_old_folders_load(tmp_path):
    test = TestFSGMVAE()
    model = test.build()
    x = LabelledImages(2, 16, seed=1).images
    y0, y1 = torch.zeros(2, 15), torch.ones(2, 15)
    assert not torch.equal(model.encoder(x, y0)[0], model.encoder(x, y1)[0])  # q(z | x, y)
    # a folder saved when the encoder had no label inputs: those weights load as zeros
    model.save_pretrained(tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    state["encoder.head.weight"] = state["encoder.head.weight"][:, :-15].clone()
    torch.save(state, tmp_path / "model.pt")
    old = test.cls.from_pretrained(tmp_path)
    assert (old.encoder.head.weight[:, -15:] == 0).all()
    assert torch.equal(old.encoder.head.weight[:, :-15], state["encoder.head.weight"])
    assert torch.equal(old.encoder(x, y0)[0], old.encoder(x, y1)[0])
    assert torch.equal(test.draw(old, 2, seed=0), test.draw(model, 2, seed=0))  # the decoder is unchanged


# ---------------------------------------------------------------------------------------------------------
# GMVAE with a frozen encoder pretrained on radiographs (the MoCo model), the report's z and K


def _tiny_moco(folder):
    from baselines import moco

    torch.manual_seed(3)
    model = moco.MoCoCXR(moco.Config(image_size=32, width=8, batch_size=4, bn_splits=2, queue_size=8))
    for m in model.modules():  # BatchNorm statistics away from their init, as a trained model's are
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(folder)
    return model.eval()


def _moco_gmvae(folder, cls=gmvae.GMVAE, **kw):
    cfg = {**gmvae.VARIANTS["GMVAE V4"], **gmvae.MOCO_ENCODER, "encoder_weights": str(folder),
           "moco_width": 8, "moco_image_size": 32, "image_size": 32, "transition_channels": 8, "batch_size": 4,
           "decoder": "linear", "linear_hidden": 16, **kw}
    return cls(cls.Config(**cfg))


@pytest.mark.parametrize("cls", [gmvae.GMVAE, gmvae.FSGMVAE])
def test_gmvae_moco_encoder_is_loaded_frozen_and_the_report_z_and_k(tmp_path, cls):
    moco = _tiny_moco(tmp_path / "moco")
    torch.manual_seed(0)
    model = _moco_gmvae(tmp_path / "moco", cls)
    assert model.config.z_dim == 1000 and model.config.k == 50  # Table 4, GMVAE V4 / FS-GMVAE V1
    assert model.prior()[0].shape == (50, 1000) and model.encoder.head.out_features == 2 * 1000
    ds = LabelledImages(8, 32, seed=0)
    model.on_train_start(ds)
    # the encoder is the MoCo model's: its pooled feature map is MoCo's own embedding
    x = ds.images[:4]
    feats = model.encoder.features.eval()(x)
    assert feats.shape == (4, 64, 1, 1)  # 512 * 8 / 64 channels, 32 px / 32
    assert torch.allclose(feats.mean(dim=(2, 3)), moco.encode(x), atol=1e-5)
    before = {k: v.clone() for k, v in model.encoder.features.state_dict().items()}
    head = model.encoder.head.weight.detach().clone()
    opts = model.configure_optimizers()
    model.train()
    for step in range(2):
        logged = model.training_step(Batch(x, ds.labels[:4]), opts, step)
    assert all(math.isfinite(v) for v in logged.values())
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.features.parameters())
    after = model.encoder.features.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert not torch.equal(head, model.encoder.head.weight)  # what sits on top of it trains
    model.save_pretrained(tmp_path / "run")
    (tmp_path / "moco" / "model.pt").unlink()  # the saved GMVAE holds the encoder it was trained with
    loaded = cls.from_pretrained(tmp_path / "run")
    assert torch.equal(loaded.encoder.features(x), model.encoder.features(x))


def test_gmvae_moco_encoder_refuses_other_folders_and_settings(tmp_path):
    from baselines import vae as vae_module

    _tiny_moco(tmp_path / "moco")
    ds = LabelledImages(4, 32, seed=0)
    with pytest.raises(WeightsError, match="cxrbench train moco"):
        _moco_gmvae(tmp_path / "missing").on_train_start(ds)
    vae_module.VAE(vae_module.VAEConfig(image_size=16, channels=(8, 16), z_dim=8)).save_pretrained(tmp_path / "vae")
    with pytest.raises(WeightsError, match="a vae folder, not a MoCo one.*never the evaluation protocol"):
        _moco_gmvae(tmp_path / "vae").on_train_start(ds)
    with pytest.raises(UsageError, match="moco_width = 8"):
        _moco_gmvae(tmp_path / "moco", moco_width=16).on_train_start(ds)
    with pytest.raises(ValueError, match="imagenet_normalize"):
        gmvae.GMVAEConfig(encoder="moco")
