"""Issue 6 baselines (DDPM, DiffuseVAE, latent diffusion): the shared generator contract on tiny configs
(16 px, 2 sampling steps, as diffusers' fast tests) and model-specific properties."""

from __future__ import annotations

import pytest
import torch

from baselines import ddpm
from baselines.trainer import Batch
from cxrbench.labels import LABELS
from tests.generator_contract import GeneratorTesterMixin, LabelledImages


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
