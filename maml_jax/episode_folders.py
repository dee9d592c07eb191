"""Few-shot episodes from folders of image files, classified by a meta-trained model.

An episode is a support folder with one subfolder per class (the class name is
the subfolder's name; classes are sorted, so label i is the i-th name) and a
query folder that is either

  * flat: image files only, unlabelled (predictions only), or
  * labelled: subfolders named like support classes (accuracy too).

A folder of episodes holds one folder per episode, each with `support/` and
`query/` in that form (e.g. Lake et al.'s 20 one-shot runs, one folder a run).
Files whose extension is not an image's (`image_folder.IMAGE_EXTENSIONS`) and
hidden entries are ignored.

Images reach the network exactly as the run's training images did: the
Omniglot reader's own decoding (`omniglot.decode_drawing`: gray, Lanczos to
the model's size, inverted so ink = 255) for a run meta-trained on Omniglot,
the image-folder fitting (`image_folder.read_image`: luma or replicated
channels, bilinear resize) for every other source, then the samplers'
uint8 -> [0, 1] conversion.  Adapting and predicting go through
`maml_jax.learner` (batch-norm statistics of the queries from the support rows,
so each query's prediction is independent of the others).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import numpy as np

from maml_jax import learner as learner_lib
from maml_jax.config import Config
from maml_jax.data import image_folder, omniglot
from maml_jax.data.progress import progress as progress_bar
from maml_jax.episodes import to_float   # the samplers' uint8 -> [0, 1], one home
from maml_jax.errors import UserError

PREPROCESSING = ("auto", "omniglot", "folder")
PROGRESS_MIN = 200   # images; smaller jobs take seconds and print no progress
QUERY_BATCH = 64   # queries per network call; padded to it, so every query count shares one compilation


class EpisodeFolderError(UserError):
  """An episode folder is missing, malformed, or holds an unreadable image; the message names it."""


@dataclasses.dataclass(frozen=True)
class FolderEpisode:
  """One episode's files and labels (labels index `classes`)."""
  name: str                          # the episode folder's name ("" for a single --support/--query pair)
  support_dir: str
  query_dir: str
  classes: tuple[str, ...]           # sorted support class names
  support_files: tuple[str, ...]
  support_labels: np.ndarray         # int32 [n]
  query_files: tuple[str, ...]
  query_labels: Optional[np.ndarray]  # int32 [m], or None when the query folder is flat (unlabelled)

  @property
  def labelled(self) -> bool:
    return self.query_labels is not None


def _visible(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _class_folders(folder: str, role: str) -> list[tuple[str, list[str]]]:
  try:
    return image_folder.scan_image_folder(folder)
  except image_folder.ImageFolderError as e:
    raise EpisodeFolderError(f"{role}: {e}") from None


def scan_episode(support_dir: str, query_dir: str, name: str = "") -> FolderEpisode:
  """Lists one episode's files and checks its layout (no image is decoded)."""
  support = _class_folders(support_dir, "support")
  classes = tuple(c for c, _ in support)
  s_files = tuple(f for _, fs in support for f in fs)
  s_labels = np.array([i for i, (_, fs) in enumerate(support) for _ in fs], np.int32)
  if not os.path.isdir(query_dir):
    raise EpisodeFolderError(f"query: folder {query_dir} does not exist or is not a folder")
  entries = _visible(query_dir)
  subdirs = [n for n in entries if os.path.isdir(os.path.join(query_dir, n))]
  images = [n for n in entries if n.lower().endswith(image_folder.IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(query_dir, n))]
  if subdirs and images:
    raise EpisodeFolderError(f"query: {query_dir} holds both image files ({images[0]}, ...) and class folders "
                             f"({subdirs[0]}, ...); use one layout: flat (unlabelled) or one folder per class")
  if subdirs:
    query = _class_folders(query_dir, "query")
    index = {c: i for i, c in enumerate(classes)}
    for c, _ in query:
      if c not in index:
        raise EpisodeFolderError(f"query: class folder {os.path.join(query_dir, c)} is not among the support "
                                 f"classes of {support_dir} ({', '.join(classes)})")
    q_files = tuple(f for _, fs in query for f in fs)
    q_labels = np.array([index[c] for c, fs in query for _ in fs], np.int32)
  else:
    if not images:
      raise EpisodeFolderError(f"query: {query_dir} has no images (looked for "
                               f"{', '.join(image_folder.IMAGE_EXTENSIONS)}) and no class folders")
    q_files, q_labels = tuple(os.path.join(query_dir, n) for n in images), None
  return FolderEpisode(name, support_dir, query_dir, classes, s_files, s_labels, q_files, q_labels)


def scan_episodes(root: str) -> list[FolderEpisode]:
  """Every episode of a folder of episode folders (`root/<episode>/{support,query}/`), sorted by name."""
  if not os.path.isdir(root):
    raise EpisodeFolderError(f"episodes: folder {root} does not exist or is not a folder")
  names = [n for n in _visible(root) if os.path.isdir(os.path.join(root, n))]
  if not names:
    raise EpisodeFolderError(f"episodes: {root} holds no episode folders; expected "
                             f"{root}/<episode>/support/<class>/<images> and {root}/<episode>/query/")
  hint = (" (this looks like one episode: pass --support and --query instead)"
          if {"support", "query"} <= set(names) else "")
  out = []
  for n in names:
    ep = os.path.join(root, n)
    for part in ("support", "query"):
      if not os.path.isdir(os.path.join(ep, part)):
        raise EpisodeFolderError(f"episodes: episode folder {ep} has no {part}/ folder; each episode needs "
                                 f"{ep}/support/<class>/<images> and {ep}/query/{hint}")
    out.append(scan_episode(os.path.join(ep, "support"), os.path.join(ep, "query"), n))
  return out


def preprocessing_for(cfg: Config, choice: str = "auto") -> str:
  """'omniglot' or 'folder': the decoding the run's training images had ('auto'), or `choice`."""
  if choice not in PREPROCESSING:
    raise EpisodeFolderError(f"--preprocess must be one of {', '.join(PREPROCESSING)}, got {choice!r}")
  if choice != "auto":
    return choice
  return "omniglot" if cfg.dataset == "omniglot" else "folder"


def image_reader(kind: str, size: int, channels: int) -> Callable[[str], np.ndarray]:
  """`read(path) -> uint8 [size, size, channels]` decoding as the named source does.

  kind: 'omniglot' (the Omniglot reader's decoding, then the meta-dataset's
  channel fitting, a no-op for 1 channel) or 'folder' (`image_folder.read_image`).
  """
  if kind == "folder":
    def read(path):
      try:
        return image_folder.read_image(path, size, channels)
      except image_folder.ImageFolderError as e:
        raise EpisodeFolderError(str(e)) from None
    return read
  if kind != "omniglot":
    raise EpisodeFolderError(f"unknown preprocessing {kind!r}")

  def read_drawing(path):
    try:
      with open(path, "rb") as f:
        gray = omniglot.decode_drawing(f.read(), size)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
      raise EpisodeFolderError(f"cannot read image {path}: {e}") from None
    return image_folder.fit_image(gray, size, channels)
  return read_drawing


def read_images(paths: Sequence[str], read: Callable[[str], np.ndarray]) -> np.ndarray:
  """uint8 [len(paths), S, S, C]."""
  return np.stack([read(p) for p in paths])


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
  episode: FolderEpisode
  probs: np.ndarray                 # float32 [m, num_classes], rows in `episode.query_files` order
  accuracy: Optional[float]         # None for an unlabelled episode

  @property
  def predicted(self) -> np.ndarray:
    return np.argmax(self.probs, axis=-1)


def classify_episode(learner: learner_lib.Learner, episode: FolderEpisode,
                     read: Callable[[str], np.ndarray]) -> EpisodeResult:
  """Adapts to the support images and gives each query image's class probabilities.

  The support images, float32 [n, S, S, C] with labels int32 [n], adapt the
  initialisation once; the queries go through the network QUERY_BATCH at a
  time (zero-padded; their batch-norm statistics are the support rows', so
  padding changes no prediction).  Returns probs float32 [m, len(classes)].
  """
  c = len(episode.classes)
  learner.check_classes(c, episode.support_dir)
  sx = to_float(read_images(episode.support_files, read))
  qx = read_images(episode.query_files, read)
  sy = np.asarray(episode.support_labels)
  m = len(qx)
  pad = np.zeros((-m % QUERY_BATCH,) + qx.shape[1:], qx.dtype)
  chunks = np.concatenate([qx, pad]).reshape((-1, QUERY_BATCH) + qx.shape[1:])
  params, first = learner_lib.adapt_fn(learner, c)(sx, sy, to_float(chunks[0]))
  predict = learner_lib.predict_fn(learner.model, c)
  probs = np.concatenate([np.asarray(first)] + [np.asarray(predict(params, sx, to_float(q))) for q in chunks[1:]])
  probs = probs[:m].astype(np.float32)
  acc = None
  if episode.labelled:
    acc = float(np.mean(np.argmax(probs, -1) == episode.query_labels))
  return EpisodeResult(episode, probs, acc)


def classify_episodes(learner: learner_lib.Learner, episodes: Sequence[FolderEpisode],
                      read: Callable[[str], np.ndarray], progress: bool = True) -> list[EpisodeResult]:
  """`classify_episode` for each (every episode's class count checked before any work).
  Progress counts images read (quiet for fewer than PROGRESS_MIN)."""
  for ep in episodes:
    learner.check_classes(len(ep.classes), ep.support_dir)
  total = sum(len(ep.support_files) + len(ep.query_files) for ep in episodes)
  bar = progress_bar(total=total, desc=f"classifying {len(episodes)} episode(s)", unit="img",
                     disable=not progress or total < PROGRESS_MIN)

  def counted(path):
    image = read(path)
    bar.update(1)
    return image

  out = []
  for ep in episodes:
    out.append(classify_episode(learner, ep, counted))
    accs = [r.accuracy for r in out if r.accuracy is not None]
    if accs:
      bar.set_postfix(acc=f"{100 * np.mean(accs):.1f}%")
  bar.close()
  return out
