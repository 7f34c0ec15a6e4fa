"""Run a trained AffectVerse checkpoint on any video: the answer, its emotion words, and how it evolves.

    python -m affectverse_ds.predict --checkpoint CKPT VIDEO [--subtitle TEXT] [--trajectory] \\
        [--config CONFIG] [--question TEXT | --benchmark NAME] [--plot PATH] [--max-new-tokens N]

The clip is decoded by the shard builder's own code (``data.media.decode_clip``: 3 FPS, 224 px,
16 kHz mono) and turned into model inputs by the loader's ``SampleEncoder``, so a clip is seen
exactly as a test sample is. ``--trajectory`` re-runs the model on the first 10%, 20%, ..., 100%
of the clip (paper Fig. 7) and prints and plots how the prediction evolves.

Python streaming API (frames and audio fed as they arrive)::

    predictor = Predictor.from_checkpoint("runs/x/checkpoints/step_000300")
    session = predictor.stream(subtitle="...")
    session.add_frames([rgb_frame, ...])      # frames sampled at data.fps (3 FPS), any size (resized)
    session.add_audio(chunk)                  # float32 mono at 16 kHz
    result = session.predict()                # belief-state prediction from everything seen so far
"""
from __future__ import annotations

import argparse
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.base import OPENSET_QUESTION
from affectverse_ds.config import AffectVerseConfig, ConfigError, load_config
from affectverse_ds.data.batch import to_device
from affectverse_ds.data.media import DecodeConfig
from affectverse_ds.data.schema import FPS, FRAME_SIZE, SAMPLE_RATE
from affectverse_ds.data.shards import sample_meta
from affectverse_ds.eval.inference import decode_answers
from affectverse_ds.model.export import CheckpointError, load_checkpoint_model, resolve_checkpoint
from affectverse_ds.eval.extract import LexiconExtractor, SentimentMapper, list_items

TRAJECTORY_RATIOS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # 10%, 20%, ..., 100% (Fig. 7)
# The encoder checks the assistant turn against the stored answer; at inference the prompt is cut at
# the answer start, so any short answer works as a stand-in.
_ANSWER_STANDIN = "?"


@dataclass
class PredictResult:
    """One prediction.

    Args:
        answer: the generated text.
        emotions: emotion words extracted from it (the scorer's extractor).
        sentiment: positive / negative / neutral mapped from them ('' without emotion wheels).
        observed_seconds: how much of the clip the model saw.
        frames, audio_samples: the media it saw.
        ratio: the observed fraction of the clip (trajectories; 1.0 otherwise).
    """

    answer: str
    emotions: list[str]
    sentiment: str = ""
    observed_seconds: float = 0.0
    frames: int = 0
    audio_samples: int = 0
    ratio: float = 1.0


@dataclass
class Observation:
    """What the model is shown: sampled frames (JPEG, as in a shard), mono audio and a subtitle."""

    frames: list[bytes] = field(default_factory=list)
    audio: np.ndarray | None = None  # float32 in [-1, 1] at 16 kHz
    subtitle: str = ""
    fps: float = FPS
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        video = len(self.frames) / self.fps
        audio = len(self.audio) / self.sample_rate if self.audio is not None else 0.0
        return max(video, audio)

    def prefix(self, ratio: float) -> "Observation":
        """The first ``ratio`` of the clip: ceil(ratio x frames) frames (at least one) and the same share of audio."""
        n = max(1, math.ceil(ratio * len(self.frames) - 1e-9)) if self.frames else 0
        audio = self.audio[: round(ratio * len(self.audio))] if self.audio is not None else None
        return Observation(self.frames[:n], audio, self.subtitle, self.fps, self.sample_rate)


def clip_observation(clip, subtitle: str = "", fps: float = FPS, sample_rate: int = SAMPLE_RATE) -> Observation:
    """A decoded :class:`~affectverse_ds.data.media.Clip` (int16 audio) as an :class:`Observation`."""
    audio = None
    if clip.audio is not None and len(clip.audio):
        audio = clip.audio.astype(np.float32) / 32768.0  # int16 -> [-1, 1), as the loader reads the FLAC
    return Observation(list(clip.frames), audio, subtitle, fps, sample_rate)


def build_meta(obs: Observation, question: str, name: str = "clip") -> dict:
    """The sample metadata the loader's encoder reads, for an observation (no label): the builder's own
    ``shards.sample_meta``, so a clip is described exactly as a shard sample is."""
    return sample_meta(benchmark="predict", split="predict", name=name, label={}, duration=None, fps=obs.fps,
                       n_frames=len(obs.frames), audio_samples=len(obs.audio) if obs.audio is not None else 0,
                       sample_rate=obs.sample_rate, subtitle=obs.subtitle, question=question,
                       answer=_ANSWER_STANDIN)


class Predictor:
    """A loaded checkpoint that answers for clips, prefixes of clips (trajectories) and streams.

    Args:
        model: an :class:`~affectverse_ds.model.affect_model.AffectVerseModel` in eval mode.
        cfg: its config (``data`` decides decoding and the token budget, ``eval.max_new_tokens`` the answer length).
        tokenizer: the backbone tokenizer.
        feature_extractor: the backbone's Whisper feature extractor.
        extractor: answer -> emotion words (the scorer's :class:`LexiconExtractor`, or the template parser).
        mapper: emotion words -> sentiment (None without emotion wheels).
        question: the user question of the prompt.
        device: where the model runs.
    """

    def __init__(self, model, cfg: AffectVerseConfig, tokenizer, feature_extractor, extractor, mapper=None,
                 question: str = OPENSET_QUESTION, device: torch.device | str = "cpu"):
        from affectverse_ds.data.collator import SampleEncoder

        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.extractor, self.mapper, self.question, self.device = extractor, mapper, question, device
        self.encoder = SampleEncoder(tokenizer, feature_extractor, cfg.data, "avt")

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, config: str | Path | None = None,
                        device: torch.device | str = "cpu", question: str | None = None,
                        benchmark: str | None = None, overrides: Sequence[str] = ()) -> "Predictor":
        """Load a ``step_NNNNNN/`` or ``export/`` checkpoint.

        Args:
            config: a config whose backbone location, data and eval sections replace the checkpoint's
                (the model sections always come from the checkpoint); None: the checkpoint's own.
            question: prompt question; default: the benchmark's, else the open-vocabulary one.
            benchmark: take the question from this benchmark.
        """
        from transformers import WhisperFeatureExtractor

        from affectverse_ds.model.backbone import load_tokenizer

        ref = resolve_checkpoint(checkpoint)
        cfg = load_config(config if config is not None else ref.export_dir / "config.yaml", list(overrides))
        model, mcfg = load_checkpoint_model(ref, cfg, device)
        extractor, mapper = emotion_readers(mcfg)
        if question is None:
            question = get_benchmark(benchmark).question if benchmark else OPENSET_QUESTION
        return cls(model, mcfg, load_tokenizer(mcfg.backbone.path),
                   WhisperFeatureExtractor.from_pretrained(mcfg.backbone.path), extractor, mapper, question, device)

    # ------------------------------------------------------------------ whole clips

    def decode(self, video: str | Path, subtitle: str = "") -> Observation:
        """Decode a video file with the shard builder's code and settings (``data.media.decode_clip``)."""
        from affectverse_ds.data.media import decode_clip

        d = self.cfg.data
        clip = decode_clip(Path(video), cfg=DecodeConfig(fps=d.fps, sample_rate=d.sample_rate))
        return clip_observation(clip, subtitle, d.fps, d.sample_rate)

    @torch.no_grad()
    def predict(self, obs: Observation, ratio: float = 1.0) -> PredictResult:
        """Answer for an observation (the whole of it)."""
        from affectverse_ds.data.collator import DecodedSample, collate

        sample = DecodedSample(build_meta(obs, self.question), list(obs.frames), obs.audio)
        batch = to_device(collate([self.encoder(sample)]), self.device)
        tokens = self.model.generate(batch, max_new_tokens=self.cfg.eval.max_new_tokens)
        answer = decode_answers(self.tokenizer, tokens.cpu())[0]
        emotions = self.extractor.extract(answer)
        sentiment = self.mapper.from_text(answer, self.extractor) if self.mapper is not None else ""
        return PredictResult(answer, emotions, sentiment, obs.seconds, len(obs.frames),
                             len(obs.audio) if obs.audio is not None else 0, ratio)

    def trajectory(self, obs: Observation, ratios: Sequence[float] = TRAJECTORY_RATIOS) -> list[PredictResult]:
        """Predictions on the first 10%, 20%, ..., 100% of a clip (paper Fig. 7)."""
        return [self.predict(obs.prefix(r), ratio=r) for r in ratios]

    def stream(self, subtitle: str = "") -> "StreamingSession":
        """A streaming session: feed frames and audio as they arrive, ask for the current prediction."""
        return StreamingSession(self, subtitle)


class StreamingSession:
    """Incremental input for one clip.

    Each frame is resized and JPEG-encoded once, when it arrives, and audio chunks are appended;
    nothing already received is decoded again. :meth:`predict` answers from everything observed so
    far: the model re-reads the observed prefix at each update, because the belief tokens (and every
    position after the audio/video region) depend on all of it, so a KV cache cannot carry over.

    Args:
        predictor: the loaded :class:`Predictor`.
        subtitle: transcript so far (:meth:`set_subtitle` updates it).
    """

    def __init__(self, predictor: Predictor, subtitle: str = ""):
        self.predictor = predictor
        d = predictor.cfg.data
        self._obs = Observation([], None, subtitle, d.fps, d.sample_rate)
        self._chunks: list[np.ndarray] = []
        self.size = FRAME_SIZE  # the shards' frame side, which the model was trained on
        self.history: list[PredictResult] = []

    def add_frames(self, frames: Iterable[np.ndarray | bytes | Image.Image]) -> int:
        """Append frames sampled at ``data.fps``: RGB uint8 arrays (H, W, 3), PIL images or JPEG bytes.

        Arrays and images are resized straight to 224 x 224 (the builder's direct resize) and
        JPEG-encoded once. Returns the number of frames held.
        """
        for frame in frames:
            self._obs.frames.append(frame if isinstance(frame, bytes) else self._jpeg(frame))
        return len(self._obs.frames)

    def _jpeg(self, frame) -> bytes:
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8))
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=DecodeConfig.jpeg_quality)  # as the shard builder stores frames
        return buf.getvalue()

    def add_audio(self, samples: np.ndarray, sample_rate: int | None = None) -> float:
        """Append mono audio (float in [-1, 1], or int16) at 16 kHz. Returns the audio seconds held."""
        rate = sample_rate or self._obs.sample_rate
        if rate != self._obs.sample_rate:
            raise ValueError(f"audio must be {self._obs.sample_rate} Hz mono, got {rate} Hz")
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"audio must be mono (n,), got {samples.shape}")
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        self._chunks.append(samples.astype(np.float32, copy=False))
        return sum(len(c) for c in self._chunks) / rate

    def set_subtitle(self, text: str) -> None:
        self._obs.subtitle = text

    @property
    def observed_seconds(self) -> float:
        return self._current().seconds

    def _current(self) -> Observation:
        if len(self._chunks) > 1:  # join once; later chunks append to the joined array
            self._chunks = [np.concatenate(self._chunks)]
        self._obs.audio = self._chunks[0] if self._chunks else None
        return self._obs

    def predict(self) -> PredictResult:
        """The belief-state prediction from everything received so far (recorded in :attr:`history`)."""
        obs = self._current()
        if not obs.frames and obs.audio is None:
            raise ValueError("nothing observed yet: add frames or audio first")
        result = self.predictor.predict(obs)
        self.history.append(result)
        return result


class TemplateExtractor:
    """Emotion words of an answer in the trained format ("The character's emotional state is X, Y.")
    without the emotion wheels (the fallback when the configured wheel folder has none)."""

    def extract(self, text: str) -> list[str]:
        return list(dict.fromkeys(list_items(text) or []))


def emotion_readers(cfg: AffectVerseConfig):
    """(extractor, mapper): the scorer's lexicon extractor and sentiment mapper over the emotion wheels at
    ``eval.wheel_dir`` (default: the packaged ones); without the wheels, the trained-answer template parser and no mapper."""
    from affectverse_ds.eval.wheel import load_wheels, wheel_dir_for

    wheel_dir = wheel_dir_for(cfg.eval)
    if not (wheel_dir / "format.csv").is_file():
        return TemplateExtractor(), None

    wheels = load_wheels(wheel_dir)
    return LexiconExtractor.from_wheels(wheels), SentimentMapper(wheels)


# ----------------------------------------------------------------------------- CLI


def format_result(result: PredictResult) -> str:
    emotions = ", ".join(result.emotions) if result.emotions else "(none)"
    sentiment = f" | sentiment: {result.sentiment}" if result.sentiment else ""
    return f"answer: {result.answer!r} | emotions: {emotions}{sentiment}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m affectverse_ds.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="step_NNNNNN/ or export/ folder")
    p.add_argument("video", help="video file (audio is taken from it)")
    p.add_argument("--subtitle", default="", help="transcript of the clip")
    p.add_argument("--trajectory", action="store_true", help="re-run at 10%%..100%% of the clip and plot (Fig. 7)")
    p.add_argument("--config", default=None, help="config for backbone location, data and eval (default: the checkpoint's)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--question", default=None, help="prompt question (default: the open-vocabulary one)")
    q.add_argument("--benchmark", default=None, help="use this benchmark's question")
    p.add_argument("--plot", default=None, help="trajectory PNG (default: <video stem>_trajectory.png)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length (default: eval.max_new_tokens)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from affectverse_ds.data.media import MediaError

    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = [f"eval.max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.config, device, args.question, args.benchmark,
                                              overrides)
        obs = predictor.decode(args.video, args.subtitle)
    except (FileNotFoundError, ConfigError, CheckpointError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MediaError as err:
        print(f"error: cannot read {args.video}: {err}", file=sys.stderr)
        return 2
    print(f"{args.video}: {len(obs.frames)} frames, {obs.seconds:.2f} s, "
          f"audio {'yes' if obs.audio is not None else 'no'}")
    if not args.trajectory:
        print(format_result(predictor.predict(obs)))
        return 0
    results = predictor.trajectory(obs)
    for r in results:
        print(f"{100 * r.ratio:5.0f}% ({r.observed_seconds:5.2f} s): {format_result(r)}")
    from affectverse_ds.eval.plots import plot_trajectory

    plot = Path(args.plot) if args.plot else Path(f"{Path(args.video).stem}_trajectory.png")
    plot_trajectory([r.ratio for r in results], [r.emotions for r in results], plot,
                    title=f"{Path(args.video).name}: prediction vs observed fraction")
    print(f"trajectory plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
