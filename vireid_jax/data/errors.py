"""The exceptions the data layer raises for anything wrong with the user's files."""


class DatasetError(ValueError):
  """A dataset folder, split file or image that cannot be used.

  The message names the path and says what was expected there, so `main.py` can print it as
  is and the user knows what to fix.
  """


class DamagedPreparedCopy(DatasetError):
  """A prepared copy (tfds_builders) whose files cannot be read or changed size since they were
  written: bit rot, a truncated copy. Preparing again from the dataset folder mends it.

  Attributes:
    prepared_dir: the prepared dataset folder (`.../<builder>/<config>/<version>`).
    reason: what was wrong, in one line.
  """

  def __init__(self, prepared_dir: str, reason: str):
    super().__init__(f'the prepared copy {prepared_dir} is damaged ({reason}): delete it to '
                     f'prepare it again from the dataset folder')
    self.prepared_dir, self.reason = prepared_dir, reason
