"""``hydra/launcher=joblib`` for atbptt-run: the joblib plugin's launcher that reruns the jobs of a
dead worker and forwards SIGTERM/Ctrl-C to its workers (``atbptt.launcher``)."""
from atbptt.launcher import RetryingLaunch


class JoblibLauncher(RetryingLaunch):
    """See ``atbptt.launcher``; configured by ``atbptt.launcher.JoblibConf``."""
