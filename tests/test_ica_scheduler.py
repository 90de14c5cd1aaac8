"""``ica`` with ``scheduler``: nilearn's joblib work runs on a Dask cluster and gives the same components."""

import numpy as np
import pytest

from llm2nifti.errors import ParameterError
from llm2nifti.workflows.ica import run_ica

pytest.importorskip("distributed")


def test_ica_on_a_dask_cluster_equals_the_local_fit(tiny_export):
    from distributed import Client, LocalCluster, get_task_stream

    local = run_ica(tiny_export, n_components=3, n_init=2, n_jobs=1, figures=False, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            remote = run_ica(tiny_export, n_components=3, n_init=2, n_jobs=2, figures=False, progress=False,
                             scheduler=cluster.scheduler_address)
    assert stream.data, "nilearn's joblib work did not run on the cluster"
    np.testing.assert_allclose(remote.ica.components_, local.ica.components_, rtol=1e-6, atol=1e-7)
    # FastICA's iterations come back from the workers too
    assert remote.ica.n_iter_ == local.ica.n_iter_ and remote.ica.converged_ == local.ica.converged_
    for a, b in zip(remote.ica.timecourses_, local.ica.timecourses_):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scheduler_must_be_an_address(tiny_export):
    with pytest.raises(ParameterError, match="`scheduler` must be a non-empty string"):
        run_ica(tiny_export, n_components=3, scheduler=8786, progress=False)
