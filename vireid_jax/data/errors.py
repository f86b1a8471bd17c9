"""The one exception the data layer raises for anything wrong with the user's files."""


class DatasetError(ValueError):
  """A dataset folder, split file or image that cannot be used.

  The message names the path and says what was expected there, so `main.py` can print it as
  is and the user knows what to fix.
  """
