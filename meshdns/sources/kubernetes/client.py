"""One ApiClient per cluster, from a kubeconfig (+ context) or the in-cluster service account."""
from __future__ import annotations

import os

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from ...config import ConfigError, KubernetesConfig


def api_client(cluster: KubernetesConfig) -> client.ApiClient:
    """A client that never touches the library's global default configuration (clusters stay apart)."""
    conf = type.__call__(client.Configuration)
    where = f"kubernetes cluster {cluster.name!r}"
    try:
        if cluster.in_cluster:
            config.load_incluster_config(client_configuration=conf)
        else:
            path = os.path.expanduser(cluster.kubeconfig) if cluster.kubeconfig else None
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{where}: kubeconfig {cluster.kubeconfig!r} does not exist")
            config.load_kube_config(config_file=path, context=cluster.context or None,
                                    client_configuration=conf, persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: cannot load its {'in-cluster config' if cluster.in_cluster else 'kubeconfig'}: "
                          f"{exc}") from None
    # our watch loop retries with backoff; urllib3's own silent retries would only hide outages
    conf.retries = 0
    return client.ApiClient(configuration=conf)
