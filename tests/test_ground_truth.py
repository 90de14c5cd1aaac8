"""Ground truth: networks planted in a hand-built Llama come back from plain nilearn CanICA.

The model (:func:`planted_model`) is a 4-layer Llama whose MLP neurons
(``mlp.hidden``, 4 x 128) hold ``K = 4`` planted functional networks of 32
neurons each (8 per layer), and whose other neurons carry dense, token-driven
background activity with scales spread over orders of magnitude. It is
exported with :func:`llm2nifti.export`, decomposed by
:class:`nilearn.decomposition.CanICA` exactly as on fMRI (the export's mask,
default smoothing), imported with :func:`llm2nifti.import_components`
(z > 2), and every planted network must be matched by a component with an IoU
of at least 0.9.

How the networks are planted
----------------------------
The residual stream is built from orthonormal directions: a constant bias
``u0`` (it keeps RMSNorm's scale nearly constant), ``K`` source directions
``U``, ``K`` network directions ``W``, and a background subspace.

- Embedding: token ``v`` carries ``C[v, k]`` along ``U[:, k]``, where every
  printable character is dealt, by corpus frequency, to one source with a
  log-normal weight (sparse, heavy-tailed), plus a background vector that is
  whitened over the corpus so no background direction stands out.
- Layer 0 has one previous-token attention head (RoPE with a small base makes
  the score peak at offset 1), copying ``U`` of token ``t-1`` into ``W`` at
  ``t``. Every other attention output and every down projection is zero, so
  all layers read the same residual stream.
- In each layer, 8 neurons per network read ``W[:, k]`` through both the gate
  and the up projection (``silu(g c) * g c``: silent at 0, heavy-tailed when
  the source fires). The other neurons read random background directions with
  a positive gate bias, scaled by log-normal gains, two per layer 20 times
  larger ("massive" neurons).

Because the sources are driven by the *previous* token and the background by
the *current* one, a network's activity is not a sum of token-identity
patterns with different spatial maps: each network is one spatial component.
"""

from __future__ import annotations

import string
import warnings

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer

from llm2nifti import export, import_components
from llm2nifti.formats.selection import read_mask
from llm2nifti.models import LoadedModel, config_sha256
from llm2nifti.text import builtin_text

K = 4  # planted networks
MEMBERS = 8  # neurons per network per layer
N_LAYERS = 4
HIDDEN = 64
INTERMEDIATE = 128
SITE = "mlp.hidden"
IOU_MIN = 0.9
N_COMPONENTS = 2 * K  # CanICA needs more components than networks: see docs/ica.md
# planted_model(readout=True): weights of the networks' and the other neurons' down projections, and the head's gain
READOUT_WEIGHT, READOUT_NOISE, READOUT_GAIN = 0.05, 1e-3, 1.0


def planted_model(seed: int = 0, rope_theta: float = 2.0, readout: bool = False):
    """A Llama with ``K`` planted networks among its ``mlp.hidden`` neurons.

    With ``readout`` the networks also *matter*: their neurons write a readout
    direction that the LM head turns into the corpus' unigram log-frequencies (a
    good prior for the next token), while every other neuron writes, in
    proportion to its scale, onto a direction the head reads as random logits
    (so ablating high-variance neurons changes the loss too: magnitude alone
    has an effect). All the directions are orthogonal to what the MLPs read, so
    the networks are recorded as without it.

    Returns
    -------
    LoadedModel
    truth : dict of int to set of (layer, neuron)
        Members of each planted network.
    sources : ndarray of shape (vocab, K)
        Source coefficient of each token (the network fires at the token after it).
    """
    import transformers as tf

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = tf.LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=N_LAYERS,
                            num_attention_heads=2, num_key_value_heads=2, vocab_size=258,
                            max_position_embeddings=512, rope_theta=rope_theta)
    model = tf.LlamaForCausalLM(config).eval()
    tokenizer = byte_tokenizer()
    basis, _ = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))
    u0, sources_dir, networks_dir, background = (basis[:, 0], basis[:, 1:K + 1], basis[:, K + 1:2 * K + 1],
                                                 basis[:, 2 * K + 1:])
    if readout:
        readout_dir, noise_dir, background = background[:, 0], background[:, 1], background[:, 2:]
    vocab = config.vocab_size

    # sources: printable characters dealt round-robin by corpus frequency, log-normal weights
    ids = np.array(tokenizer(builtin_text()[:40000], add_special_tokens=False)["input_ids"])
    freq = np.bincount(ids, minlength=vocab)
    printable = set(tokenizer(string.ascii_letters + string.digits + string.punctuation,
                              add_special_tokens=False)["input_ids"])
    ranked = [v for v in np.argsort(-freq, kind="stable") if v in printable and freq[v] > 0]
    sources = np.zeros((vocab, K))
    for rank, v in enumerate(ranked):
        sources[v, rank % K] = rng.lognormal(0.0, 0.5)

    # background: random per token, whitened under the corpus' token frequencies
    p = freq / freq.sum()
    bg = rng.standard_normal((vocab, background.shape[1]))
    bg -= p @ bg
    cov = (bg * p[:, None]).T @ bg
    evals, evecs = np.linalg.eigh(cov)
    bg = bg @ evecs @ np.diag(evals ** -0.5) @ evecs.T
    embedding = 40.0 * u0 + 3.0 * sources @ sources_dir.T + bg @ background.T

    # previous-token head: q.k after RoPE = sum_i cos(theta_i (delta - 1)), largest at delta = 1
    head = HIDDEN // config.num_attention_heads
    theta = rope_theta ** (-np.arange(0, head, 2) / head)
    q = 2.5 * np.concatenate([np.cos(theta), -np.sin(theta)])
    k = 2.5 * np.concatenate([np.ones(head // 2), np.zeros(head // 2)])

    def tensor(a):
        return torch.tensor(np.asarray(a), dtype=torch.float32)

    truth = {c: set() for c in range(K)}
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(tensor(embedding))
        for layer, block in enumerate(model.model.layers):
            attn = block.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, block.mlp.down_proj):
                proj.weight.zero_()
            if layer == 0:
                attn.q_proj.weight[:head] = tensor(np.outer(q, u0))
                attn.k_proj.weight[:head] = tensor(np.outer(k, u0))
                attn.v_proj.weight[:K] = tensor(sources_dir.T)
                attn.o_proj.weight[:, :K] = tensor(networks_dir)
            order = rng.permutation(INTERMEDIATE)
            gate = 0.7 * rng.standard_normal((INTERMEDIATE, background.shape[1])) @ background.T + u0
            up = 0.7 * rng.standard_normal((INTERMEDIATE, background.shape[1])) @ background.T
            for c in range(K):
                members = order[c * MEMBERS:(c + 1) * MEMBERS]
                truth[c].update((layer, int(n)) for n in members)
                gain = 10.0 * rng.uniform(0.8, 1.2, (MEMBERS, 1))
                gate[members] = gain * networks_dir[:, c]
                up[members] = gain * networks_dir[:, c]
            scale = rng.lognormal(0.0, 1.0, INTERMEDIATE)
            scale[rng.choice(order[K * MEMBERS:], 2, replace=False)] *= 20.0  # "massive" neurons
            block.mlp.gate_proj.weight.copy_(tensor(gate))
            block.mlp.up_proj.weight.copy_(tensor(up * scale[:, None]))
            if readout:
                down = np.outer(noise_dir, READOUT_NOISE * np.ones(INTERMEDIATE))
                down[:, order[:K * MEMBERS]] = READOUT_WEIGHT * readout_dir[:, None]
                block.mlp.down_proj.weight.copy_(tensor(down))
        if readout:
            logfreq = np.log(freq + 1.0)
            unigram = np.outer(logfreq - logfreq.mean(), readout_dir)
            noise = np.outer(rng.standard_normal(vocab), noise_dir)
            model.lm_head.weight.copy_(tensor(READOUT_GAIN * unigram + noise))
    provenance = {"ModelID": "planted-llama", "ModelClass": type(model).__name__, "ModelRevision": None,
                  "ModelFileSHA256": None, "ModelConfigSHA256": config_sha256(config)}
    return LoadedModel(model, tokenizer, provenance), truth, sources


def iou(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def best_matches(truth: dict, mask) -> dict:
    """For each planted network, ``(component, IoU)`` of the imported component that overlaps it most."""
    return {c: max(((name, iou(members, mask.neurons(name))) for name in mask.components), key=lambda x: x[1])
            for c, members in truth.items()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    loaded, truth, sources = planted_model()
    out = tmp_path_factory.mktemp("planted") / "export"
    result = export(out, loaded, "pydoc", site=SITE, run_tokens=256, max_runs=8, progress=False)
    return result, truth, sources, loaded


def _canica(result, **kwargs):
    from nilearn.decomposition import CanICA

    runs = [str(result.paths.bold(r)) for r in range(1, result.n_runs + 1)]
    params = dict(mask=str(result.paths.mask), n_components=N_COMPONENTS, random_state=0,
                  standardize="zscore_sample")  # nilearn's default (True), under its future name
    params.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return CanICA(**params).fit(runs)


def test_planted_networks_follow_the_previous_token(planted):
    """The model does what its docstring claims: each network's neurons track the previous token's source."""
    result, truth, sources, loaded = planted
    import nibabel as nib

    data = np.asarray(nib.load(result.paths.bold(1)).dataobj)[tuple(result.layout.voxels.T)].T  # tokens x neurons
    events = np.loadtxt(str(result.paths.events(1)), delimiter="\t", skiprows=1, usecols=4, dtype=int)
    for c, members in truth.items():
        ids = [layer * INTERMEDIATE + n for layer, n in members]
        activity = data[:, ids]
        assert np.corrcoef(activity.T).min() > 0.99  # the members move together
        previous = sources[np.r_[events[0], events[:-1]], c]
        assert np.corrcoef(activity.mean(axis=1), previous)[0, 1] > 0.8
        assert 0.05 < (previous > 0).mean() < 0.4  # sparse


def test_plain_nilearn_canica_recovers_planted_networks(planted):
    """nilearn's CanICA, unchanged (default smoothing, the export's mask), then import: IoU >= 0.9 for all."""
    result, truth, _, _ = planted
    ica = _canica(result)  # smoothing_fwhm=6 (nilearn's default): the identity at 24 mm voxels
    assert ica.smoothing_fwhm == 6
    mask = import_components(ica.components_img_, export=result.out_dir).mask
    matches = best_matches(truth, mask)
    assert min(score for _, score in matches.values()) >= IOU_MIN, matches
    assert len({name for name, _ in matches.values()}) == K  # one distinct component per network


def test_llm2nifti_ica_defaults_recover_planted_networks(planted, tmp_path):
    """``llm2nifti ica`` with its defaults (files on disk), then ``llm2nifti import`` of components.nii.gz."""
    from click.testing import CliRunner

    from llm2nifti.cli import main

    result, truth, _, _ = planted
    runner = CliRunner()
    ica_out, import_out = tmp_path / "ica", tmp_path / "import"
    run = runner.invoke(main, ["ica", str(result.out_dir), "--n-components", str(N_COMPONENTS), "--no-figures",
                               "--quiet", "--out", str(ica_out)])
    assert run.exit_code == 0, run.output
    run = runner.invoke(main, ["import", str(ica_out / "components.nii.gz"), "--export", str(result.out_dir),
                               "--out", str(import_out)])
    assert run.exit_code == 0, run.output
    mask = read_mask(import_out)
    matches = best_matches(truth, mask)
    assert min(score for _, score in matches.values()) >= IOU_MIN, matches


def test_networks_are_lost_without_standardization(planted):
    """The finding behind ``--standardize zscore_sample``: unscaled, the massive neurons take the components."""
    result, truth, _, _ = planted
    ica = _canica(result, standardize=None)
    mask = import_components(ica.components_img_, export=result.out_dir).mask
    matches = best_matches(truth, mask)
    assert max(score for _, score in matches.values()) < 0.5, matches


def test_seed_temporal_fastica_does_not_recover_planted_networks(planted):
    """``method="fastica-temporal"`` (Liu et al.: FastICA over tokens, centred, unscaled), measured honestly.

    With 2K components, as CanICA, no planted network comes back (best IoU 0.00 here; at most 0.09 over seeds
    0-4); its time courses barely follow the networks. With 64 components the time courses do follow them
    (|r| 0.80-0.93 here) but the maps stay poor (IoU <= 0.22 here, <= 0.34 over seeds 0-4). See docs/ica.md.
    """
    from llm2nifti.formats.export import open_export
    from llm2nifti.ica import NeuronICA, read_tokens

    result, truth, _, _ = planted
    data, _ = read_tokens(open_export(result.out_dir))  # tokens x neurons, neuron-id order
    for n_components, max_iou, min_r in ((N_COMPONENTS, 0.1, None), (64, 0.5, 0.7)):
        ica = NeuronICA("fastica-temporal", n_components).fit(result.out_dir)
        assert all(ica.converged_)
        matches = best_matches(truth, import_components(ica.components_img_, export=result.out_dir).mask)
        assert max(score for _, score in matches.values()) < max_iou, matches
        if min_r is not None:
            sources = np.concatenate(ica.timecourses_)
            for members in truth.values():
                activity = data[:, [layer * INTERMEDIATE + n for layer, n in members]].mean(axis=1)
                assert np.abs(np.corrcoef(np.c_[activity, sources].T)[0, 1:]).max() > min_r
