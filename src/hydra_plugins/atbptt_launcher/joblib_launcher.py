"""``hydra/launcher=joblib`` for atbptt-run: the joblib plugin's launcher that reruns the jobs of a
dead worker and forwards SIGTERM/Ctrl-C to its workers (``atbptt.launcher``)."""
from atbptt.launcher import JoblibConf, RetryingLaunch


class JoblibLauncher(RetryingLaunch):
    """See ``atbptt.launcher``; configured by ``atbptt.launcher.JoblibConf``."""


def register() -> None:
    """Store ``JoblibConf`` as ``hydra/launcher=joblib``, over the plugin's own entry (Hydra
    stores that when it first scans the plugins, which is done here first), and register the
    launcher class with Hydra (its scan misses packages installed in editable mode)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance().register(JoblibLauncher)
    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=JoblibConf,
                                 provider="atbptt")
