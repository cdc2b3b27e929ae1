"""Streamers (gpt2_core.streamers) against transformers' TextStreamer, and `gpt2 generate`: its flags reach
`generate`, it streams one sequence and prints several, `--stats`, bad values exit 2 in one line, and the shipped
model's generation_config.json decides what a flag left unset does."""

from __future__ import annotations

import io
import json
import queue
import threading
import time

import numpy as np
import pytest

from gpt2_apps import cli
from gpt2_apps.cli import DEFAULT_MODEL_DIR
from gpt2_core.config import GPT2Config
from gpt2_core.generation_config import GenerationConfig
from gpt2_core.streamers import TextIteratorStreamer, TextStreamer, TokenCounter
from gpt2_core.tokenization import GPT2Tokenizer

TEXTS = (
    "Hello, world! This is <br> a test.\nNew line: 42%.\n\n  indented -- done",
    "naïve café, résumé; Zürich 3.14 (ok) [x] {y} a/b",
    "ROMEO:\nWhat, ho! apothecary!\n\nJULIET:\nO Romeo, Romeo!",
    "emoji 🎉 and 日本語 and 龘 ok 🎉🎉 end",
)


@pytest.fixture(scope="module")
def tok():
    return GPT2Tokenizer()


class Recorder(TextStreamer):
    """Our TextStreamer, keeping the released pieces."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pieces: list[tuple[str, bool]] = []

    def on_finalized_text(self, text, stream_end=False):
        self.pieces.append((text, stream_end))


def stream(streamer, ids, prompt_len=2):
    streamer.put(np.asarray([ids[:prompt_len]]))  # the prompt, (1, T)
    for i in ids[prompt_len:]:
        streamer.put(np.asarray([i]))  # one step, (1,)
    streamer.end()


# ------------------------------------------------------------------------------------------------ streamers


@pytest.mark.parametrize("text", TEXTS[:3])
def test_text_streamer_releases_what_transformers_does(tok, text):
    from transformers.generation.streamers import TextStreamer as HFTextStreamer

    class HFRecorder(HFTextStreamer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pieces = []

        def on_finalized_text(self, text, stream_end=False):
            self.pieces.append((text, stream_end))

    ids = tok.encode(text)
    ours, theirs = Recorder(tok), HFRecorder(tok)
    stream(ours, ids)
    stream(theirs, ids)
    # transformers also hands out empty pieces; the non-empty ones and the end must agree
    assert [p for p in ours.pieces if p[0] or p[1]] == [p for p in theirs.pieces if p[0] or p[1]]
    assert "".join(p for p, _ in ours.pieces) == text


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_add_up_and_never_hold_a_replacement_char(tok, text):
    ids = tok.encode(text)
    r = Recorder(tok)
    stream(r, ids, prompt_len=1)
    assert "".join(p for p, _ in r.pieces) == text
    assert not any("\ufffd" in p for p, _ in r.pieces), r.pieces
    assert r.pieces[-1][1] and not any(end for _, end in r.pieces[:-1])


def test_utf8_character_split_across_tokens(tok):
    ids = tok.encode("a 龘")
    assert len(tok.encode("龘")) > 1  # GPT-2 spells it in byte tokens: the first one decodes to U+FFFD alone
    r = Recorder(tok)
    r.put(np.asarray([ids[:1]]))
    released = []
    for i in ids[1:]:
        r.put(np.asarray([i]))
        released.append("".join(p for p, _ in r.pieces))
    assert all("\ufffd" not in s for s in released)
    assert released == ["a ", "a ", "a 龘"]  # a CJK character is released once complete, before end()
    r.end()
    # an incomplete character at the very end is flushed as it decodes
    r2 = Recorder(tok)
    stream(r2, ids[:-1], prompt_len=1)
    assert "".join(p for p, _ in r2.pieces) == tok.decode(ids[:-1])
    # a symbol (an emoji) waits for the next space, then comes whole
    ids = tok.encode("a 🎉 b")
    r3 = Recorder(tok)
    r3.put(np.asarray([ids[:1]]))
    released = []
    for i in ids[1:]:
        r3.put(np.asarray([i]))
        released.append("".join(p for p, _ in r3.pieces))
    assert set(released[:-1]) == {"a "} and released[-1] == "a 🎉 "  # "b" may still grow


def test_word_boundaries(tok):
    r = Recorder(tok)
    r.put(np.asarray([tok.encode("He")]))
    pieces = {}
    for word in (" said", ":", " <", "br", ">", " done", ".", "\n", "Next"):
        (i,) = tok.encode(word)
        r.put(np.asarray([i]))
        pieces[word] = "".join(p for p, _ in r.pieces)
    assert pieces[" said"] == "He said"  # letters and spaces: released at once
    assert pieces[":"] == "He said"  # a symbol waits for the next space
    assert pieces[">"] == "He said: "  # "<br>" may still grow: only up to the last space
    assert pieces[" done"] == "He said: <br> "  # the symbols are out: up to the last space
    assert pieces["."] == "He said: <br> "
    assert pieces["\n"] == "He said: <br> done.\n"  # a newline releases the line
    r.end()
    assert "".join(p for p, _ in r.pieces) == "He said: <br> done.\nNext"


def test_skip_prompt_file_and_array_types(tok):
    import torch

    ids = tok.encode("ROMEO: hello there")
    out = io.StringIO()
    s = TextStreamer(tok, skip_prompt=True, file=out)
    s.put(torch.tensor([ids[:3]]))  # torch tensors, NumPy arrays and lists all work
    s.put(torch.tensor([ids[3]]))
    s.put(np.asarray([ids[4]]))
    s.put([ids[5]] if len(ids) > 5 else [])
    s.end()
    assert out.getvalue() == tok.decode(ids[3:]) + "\n"
    out = io.StringIO()
    stream(TextStreamer(tok, file=out), ids, prompt_len=3)
    assert out.getvalue() == "ROMEO: hello there\n"


def test_batch_above_one_is_refused(tok):
    s = TextStreamer(tok, file=io.StringIO())
    with pytest.raises(ValueError, match="batch size 1.*shape \\(2, 3\\)"):
        s.put(np.zeros((2, 3), np.int64))


def test_iterator_streamer_in_a_thread(tok):
    text = TEXTS[2]
    ids = tok.encode(text)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=10)

    def produce():
        streamer.put(np.asarray([ids[:2]]))
        for i in ids[2:]:
            time.sleep(0.001)
            streamer.put(np.asarray([i]))
        streamer.end()

    thread = threading.Thread(target=produce)
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces) == tok.decode(ids[2:])
    assert len(pieces) > 3 and all(pieces)
    with pytest.raises(queue.Empty):
        next(TextIteratorStreamer(tok, timeout=0.01))


def test_token_counter(tok):
    inner = Recorder(tok)
    counter = TokenCounter(inner)
    ids = tok.encode("one two three four")
    stream(counter, ids, prompt_len=1)
    assert (counter.prompt_tokens, counter.new_tokens) == (1, len(ids) - 1)
    assert counter.elapsed >= counter.time_to_first_token >= 0
    assert counter.tokens_per_second is not None and counter.tokens_per_second > 0
    assert "".join(p for p, _ in inner.pieces) == "one two three four"


# ------------------------------------------------------------------------------------------------ gpt2 generate


def test_shipped_generation_config():
    # the file is transformers' format: transformers reads the same values
    import transformers

    ours = GenerationConfig.from_pretrained(DEFAULT_MODEL_DIR)
    theirs = transformers.GenerationConfig.from_pretrained(DEFAULT_MODEL_DIR)
    data = json.loads((DEFAULT_MODEL_DIR / "generation_config.json").read_text())
    assert data["do_sample"] is True
    for key, value in data.items():
        assert getattr(ours, key) == getattr(theirs, key) == value, key


class FakeLM:
    def __init__(self, generation_config=None):
        self.config = GPT2Config.from_json_file(DEFAULT_MODEL_DIR / "config.json")
        if generation_config is not None:
            self.generation_config = generation_config


class FakeBackend:
    """Records what `gpt2 generate` asks for; streams and returns a fixed continuation."""

    CONTINUATION = " Ay, my lord.\nJULIET:"

    def __init__(self, lm, tokenizer):
        self.lm, self.calls, self.loaded, self.tokenizer = lm, [], [], tokenizer

    def require(self):
        return self

    def load(self, head, model):
        self.loaded.append((head, model))
        return self.lm

    def generate(self, lm, input_ids, attention_mask=None, **kwargs):
        self.calls.append(dict(kwargs, input_ids=input_ids, attention_mask=attention_mask))
        new = self.tokenizer.encode(self.CONTINUATION)
        rows = input_ids.shape[0] * kwargs.get("num_return_sequences", 1)
        ids = np.concatenate([np.repeat(input_ids, rows // input_ids.shape[0], 0), np.tile(new, (rows, 1))], 1)
        streamer = kwargs.get("streamer")
        if streamer is not None:
            streamer.put(input_ids)
            for t in new:
                streamer.put(np.asarray([t]))
            streamer.end()
        return ids


@pytest.fixture
def fake(monkeypatch, tok):
    backend = FakeBackend(FakeLM(), tok)  # no generation_config attribute: the CLI reads the model dir's file
    monkeypatch.setattr(cli, "get_backend", lambda name: backend)
    monkeypatch.setattr(cli, "load_tokenizer", lambda model: tok)  # the same vocabulary, read once
    return backend


def test_flags_reach_generate(fake, capsys):
    rc = cli.main([
        "generate", "--num-beams", "4", "--num-return-sequences", "2", "--length-penalty", "0.5", "--no-do-sample",
        "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--min-new-tokens", "3", "--max-new-tokens",
        "9", "--top-k", "7", "--top-p", "0.5", "--temperature", "0.6", "--seed", "3", "ROMEO:",
    ])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (call,) = fake.calls
    assert fake.loaded == [("lm", str(DEFAULT_MODEL_DIR))]
    expected = dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, do_sample=False, repetition_penalty=1.3,
                    no_repeat_ngram_size=2, min_new_tokens=3, max_new_tokens=9, top_k=7, top_p=0.5, temperature=0.6,
                    seed=3)
    assert {k: call[k] for k in expected} == expected
    assert "streamer" not in call and "stop_strings" not in call  # beams: printed at the end, not streamed
    # two sequences, each the prompt and its continuation, separated by a rule
    one = "ROMEO:" + FakeBackend.CONTINUATION + "\n"
    assert out.out == one + "-" * 40 + "\n" + one


def test_unset_flags_are_not_passed_and_one_sequence_streams(fake, capsys):
    rc = cli.main(["generate", "--stop", "JULIET:", "--stop", "\n\n", "ROMEO:"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (call,) = fake.calls
    decoding = {k: v for k, v in call.items() if k in GenerationConfig.field_names()}
    # only what the command line said: the model's generation_config.json decides the rest inside generate
    assert decoding == {"stop_strings": ["JULIET:", "\n\n"], "return_dict_in_generate": False}
    assert isinstance(call["streamer"], TokenCounter) and isinstance(call["streamer"].streamer, TextStreamer)
    assert call["tokenizer"] is not None  # stop strings need it
    assert out.out == "ROMEO:" + FakeBackend.CONTINUATION + "\n"


def test_several_prompts_are_batched_and_printed(fake, capsys):
    rc = cli.main(["generate", "--max-new-tokens", "5", "ROMEO:", "To be, or not"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (call,) = fake.calls
    assert "streamer" not in call and call["input_ids"].shape[0] == 2
    assert call["attention_mask"][0, 0] == 0  # left padding
    assert out.out.split("-" * 40 + "\n") == ["ROMEO:" + FakeBackend.CONTINUATION + "\n",
                                               "To be, or not" + FakeBackend.CONTINUATION + "\n"]


def test_stats(fake, capsys):
    rc = cli.main(["generate", "--stats", "ROMEO:"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (line,) = out.err.strip().splitlines()
    stats = dict(kv.split("=") for kv in line.removeprefix("stats: ").split())
    n = len(fake.tokenizer.encode(FakeBackend.CONTINUATION))
    assert int(stats["new_tokens"]) == n and int(stats["prompt_tokens"]) == len(fake.tokenizer.encode("ROMEO:"))
    assert int(stats["sequences"]) == 1 and float(stats["tokens_per_s"]) > 0 and float(stats["time_s"]) >= 0
    # not streamed: counted from the returned ids, up to the first eos
    fake.calls.clear()
    rc = cli.main(["generate", "--stats", "--num-beams", "2", "--no-do-sample", "ROMEO:"])
    assert rc == 0
    stats = dict(kv.split("=") for kv in capsys.readouterr().err.strip().removeprefix("stats: ").split())
    assert int(stats["new_tokens"]) == n


def test_count_new_tokens():
    ids = np.asarray([[1, 2, 5, 9, 0, 0], [1, 2, 5, 5, 5, 5], [1, 2, 7, 7, 7, 0]])
    assert cli.count_new_tokens(ids, 2, (9,), 0) == 2 + 4 + 3


@pytest.mark.parametrize("argv, name", [
    (["--top-p", "1.5"], "top_p"),
    (["--num-beams", "0"], "num_beams"),
    (["--temperature", "0"], "temperature"),  # the shipped model samples, so temperature must be > 0
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--max-new-tokens", "500"], "n_positions"),
    (["--no-do-sample", "--num-return-sequences", "2"], "num_return_sequences"),
    (["--num-beams", "2", "--num-return-sequences", "3"], "num_return_sequences"),
    (["--repetition-penalty", "-1"], "repetition_penalty"),
    (["--no-repeat-ngram-size", "-2"], "no_repeat_ngram_size"),
    (["--top-k", "-1"], "top_k"),
    (["--stop", ""], "stop_strings"),
    (["--min-new-tokens", "100"], "min_new_tokens"),
])
def test_bad_values_exit_2_in_one_line(fake, capsys, argv, name):
    rc = cli.main(["generate", *argv, "ROMEO:"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("gpt2 generate: error: ") and name in line and "Traceback" not in err
    assert not fake.calls  # refused before generating


@pytest.mark.parametrize("argv", [["--top-k", "many"], ["--num-beams", "1.5"], ["--bogus"]])
def test_bad_flags_are_usage_errors(fake, capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", *argv, "ROMEO:"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error:" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_empty_prompt(fake, capsys):
    assert cli.main(["generate", ""]) == 2
    assert "prompt is empty" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real backend


def test_shipped_model_settings_reach_torch_generate(capsys):
    """The real torch backend on the shipped model: greedy (--no-do-sample) with the file's repetition_penalty
    equals transformers' greedy with the same penalty, streamed to stdout token by token."""
    import torch
    import transformers

    tok = GPT2Tokenizer()
    data = json.loads((DEFAULT_MODEL_DIR / "generation_config.json").read_text())
    assert data.get("repetition_penalty", 1.0) != 1.0  # otherwise this test would not see the file
    rc = cli.main(["generate", "--no-do-sample", "--max-new-tokens", "24", "ROMEO:"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    hf = transformers.GPT2LMHeadModel.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("ROMEO:")])
    texts = {}
    for penalty in (1.0, data["repetition_penalty"]):  # explicit: transformers also reads the file
        with torch.no_grad():
            seq = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                              repetition_penalty=penalty, pad_token_id=50256)
        texts[penalty] = tok.decode(seq[0], skip_special_tokens=True) + "\n"
    assert texts[1.0] != texts[data["repetition_penalty"]]  # 24 tokens are enough to tell
    assert out.out == texts[data["repetition_penalty"]]


# ------------------------------------------------------------------------------------------------ serve


@pytest.mark.parametrize("sampling, processors", [
    ((False,), ()),
    ((True, 0.7, 0.9, 0), ("temperature", "top_p")),  # no top-k unless asked: OpenAI has none
    ((True, 1.0, 1.0, 5), ("top_k",)),
])
def test_serve_ignores_the_shipped_generation_config(sampling, processors):
    """`gpt2 serve` keeps OpenAI's meaning: the shipped file's sampling defaults and repetition penalty, and
    GenerationConfig's top_k=50, never apply to a completion."""
    from gpt2_apps.serve.engine import Sampling
    from gpt2_core.generation import resolve_generation

    config = GPT2Config.from_json_file(DEFAULT_MODEL_DIR / "config.json")
    shipped = GenerationConfig.from_pretrained(DEFAULT_MODEL_DIR)
    settings = resolve_generation(config, 4, model_generation_config=shipped, max_new_tokens=8,
                                  **Sampling(*sampling).generate_kwargs())
    assert settings.do_sample is sampling[0]
    assert settings.processors == processors
