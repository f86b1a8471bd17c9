"""The one error of the inference code: bad input, said in one line that names what to do."""


class InferenceError(ValueError):
  """Input that the inference modes and the API cannot use (a workdir without checkpoints, an
  image folder with no images, a modality the run did not train, an embeddings file of another
  checkpoint, ...). `main.py` prints its message as one `error: ...` line."""


class BadImage(InferenceError):
  """One image that cannot be used (unreadable, too small, neither RGB nor greyscale). A stream
  of images names it in one line and goes on without it; a single image given to the API
  raises it."""
