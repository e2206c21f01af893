"""The planner VLM's vocabulary and a tokenizer that reproduces llama.cpp's exactly.

The language model is written as a GGUF with tokenizer model ``"llama"`` (SentencePiece pieces with
scores, byte fallback) and ``add_space_prefix = false``. :class:`PlanTokenizer` implements the same
bigram-merge algorithm as llama.cpp's SPM tokenizer, so the prompt tokens the model is trained on are
the tokens llama.cpp feeds it (a test compares both on the real prompts).

Coordinates are **location tokens**: one token per integer pixel value ``"0"`` .. ``"319"`` and per
yaw ``"-90"`` .. ``"90"``, as PaliGemma and Florence-2 do, so a coordinate is one prediction over
ordered bins and the training loss can know that 129 is close to 130. The answer is still plain JSON:
llama.cpp generates it token by token under the plan grammar, and the grammar sees digits.

The answer is tokenised canonically (:meth:`PlanTokenizer.encode_answer`): structural pieces such as
``{"point_2d": [`` and ``], "gripper": "close"}`` are single tokens, numbers are location tokens, and
the answer ends with ``</s>``. Each answer position carries a *slot* (``u``, ``v``, ``yaw`` or none)
that the distance-aware loss uses.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SPACE = "\u2581"
UNK, BOS, EOS = 0, 1, 2
SPECIAL = ("<|im_start|>", "<|im_end|>")
# gguf.TokenType values (kept literal so this module needs neither torch nor gguf)
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
PIXEL_MAX = 319                 # the model plans in a 320x240 image
YAW_LIMIT = 90
ANSWER_PIECES = ('{"anchors": [', '{"point_2d": [', ", ", '], "gripper": "close"}', '], "gripper": "open"}',
                 '], "yaw": ', ', "subtasks": [', "]}", "}")
SLOT_NONE, SLOT_U, SLOT_V, SLOT_YAW = 0, 1, 2, 3

# Words of robot instructions beyond those of the training phrasings, so that an unseen phrasing
# tokenises into words the model has at least seen as pieces, not into bytes.
BASE_WORDS = """
a an the this that it its them all every everything each one ones other another both
put place move drop set stack pick take grab lift carry bring transfer clear empty tidy load
in into to inside on onto top of over above behind next near from up down off then and after first
second third finally please could you can would me table tray box bin container basket cup mug glass
cube block brick wall obstacle red blue green yellow orange purple white grey gray brown black
reaching reach across without hitting around left right
""".split()

# ChatML. llama.cpp's MTMDChatHandler renders it with trim_blocks/lstrip_blocks after turning each image
# part into a text part holding the media marker, where the image embeddings then go.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _pieces_of(word: str) -> list[str]:
    return [word[:k] for k in range(2, min(len(word), 24) + 1)]


@dataclass
class PlanTokenizer:
    """Tokens, scores and types as written to the GGUF, plus the encoders."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise ValueError("PlanTokenizer: duplicate tokens in the vocabulary")
        self.u_ids = [self._index[str(n)] for n in range(PIXEL_MAX + 1)]
        self.yaw_ids = [self._index[str(n)] for n in range(-YAW_LIMIT, YAW_LIMIT + 1)]
        self.number_ids = {n: self._index[str(n)] for n in range(-YAW_LIMIT, PIXEL_MAX + 1)}
        self._answer = {p: self._index[p.replace(" ", SPACE)] for p in ANSWER_PIECES}
        self._special = sorted((t for t, ty in zip(self.tokens, self.types) if ty == CONTROL and t not in ("<s>", "</s>")),
                               key=len, reverse=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, texts: list[str], phrases: list[str] = ()) -> "PlanTokenizer":
        """The vocabulary for ``texts`` (prompt template, system message, instructions). Each of the
        constant ``phrases`` (the parts of the prompt that never change) gets every prefix as a piece,
        longer ones scoring higher, so the merges run along it and it becomes one token: the prompt
        stays a few tokens long and training and planning spend their time on the image."""
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(SPECIAL)
        types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [CONTROL] * len(SPECIAL)
        scores = [0.0] * len(tokens)
        pieces: dict[str, None] = {}
        for c in range(0x20, 0x7F):
            pieces[chr(c).replace(" ", SPACE)] = None
        for n in range(-YAW_LIMIT, PIXEL_MAX + 1):
            pieces[str(n)] = None
        for p in ANSWER_PIECES:
            pieces[p.replace(" ", SPACE)] = None
        words = set(BASE_WORDS)
        for t in texts:
            for special in SPECIAL:
                t = t.replace(special, " ")
            words.update(re.findall(r"[^\s]+", t))
        for word in sorted(words):
            for w in (word, SPACE + word):
                for p in _pieces_of(w):
                    pieces[p] = None
        for phrase in phrases:
            for special in SPECIAL:
                if special in phrase:
                    raise ValueError(f"PlanTokenizer.build: phrase {phrase[:30]!r} holds control token {special}")
            w = phrase.replace(" ", SPACE)
            for k in range(2, len(w) + 1):
                pieces[w[:k]] = None
        for p in pieces:
            tokens.append(p)
            types.append(NORMAL)
            scores.append(-1.0 / len(p))  # longer pieces merge first
        return cls(tokens, scores, types)

    @classmethod
    def load(cls, path: str | Path) -> "PlanTokenizer":
        d = json.loads(Path(path).read_text())
        return cls(d["tokens"], d["scores"], d["types"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"tokens": self.tokens, "scores": self.scores, "types": self.types}))

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, piece: str) -> int:
        return self._index[piece]

    # ------------------------------------------------------------------ llama.cpp's SPM algorithm
    def _spm(self, text: str) -> list[int]:
        text = text.replace(" ", SPACE)
        sym = list(text)  # one symbol per code point (llama.cpp splits UTF-8 sequences the same way)
        n = len(sym)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1:] = [-1] if n else []
        size = [1] * n
        heap: list[tuple[float, int, int, str]] = []
        rev: dict[str, tuple[int, int]] = {}

        def add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            s = text[left:left + size[left]] + text[right:right + size[right]]
            tid = self._index.get(s)
            if tid is None:
                return
            heapq.heappush(heap, (-_f32(self.scores[tid]), left, len(s), s))
            rev[s] = (left, right)

        starts = list(range(n))  # symbol i covers text[i : i + size[i]]
        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, left, sz, s = heapq.heappop(heap)
            right = nxt[left]
            if size[left] == 0 or right == -1 or size[right] == 0 or size[left] + size[right] != sz:
                continue
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        out: list[int] = []

        def reseg(i: int, length: int) -> None:
            s = text[i:i + length]
            tid = self._index.get(s)
            if tid is not None:
                out.append(tid)
                return
            if s in rev:
                left, right = rev[s]
                reseg(left, right - left)
                reseg(right, i + length - right)
                return
            out.extend(self._index[f"<0x{b:02X}>"] for b in s.encode("utf-8"))

        i = 0 if n else -1
        del starts
        while i != -1:
            reseg(i, size[i])
            i = nxt[i]
        return out

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        """Tokens of ``text`` as llama.cpp makes them with ``parse_special``: control pieces such as
        ``<|im_start|>`` become their token, the text between them goes through SPM."""
        out = [BOS] if bos else []
        if not self._special:
            return out + self._spm(text)
        pattern = "(" + "|".join(re.escape(s) for s in self._special) + ")"
        for part in re.split(pattern, text):
            if not part:
                continue
            out.extend([self._index[part]] if part in self._special else self._spm(part))
        return out

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            if i in (BOS, EOS):
                continue
            t = self.tokens[i]
            if self.types[i] == BYTE:
                out.append(int(t[3:5], 16))
            else:
                out.extend(t.replace(SPACE, " ").encode("utf-8"))
        return out.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ answers
    def encode_answer(self, answer: str) -> tuple[list[int], list[int], list[int]]:
        """Canonical tokens of a plan answer, ending with ``</s>``, with each position's slot kind and
        value (pixel or yaw; 0 where the slot is none)."""
        ids, slots, values = [], [], []
        pos, last = 0, None
        pieces = sorted(ANSWER_PIECES, key=len, reverse=True)
        while pos < len(answer):
            m = re.match(r"-?\d+", answer[pos:])
            if m:
                v = int(m.group())
                if last == '{"point_2d": [':
                    slot = SLOT_U
                elif last == ", " and slots and slots[-2:-1] == [SLOT_U]:
                    slot = SLOT_V
                elif last == '], "yaw": ':
                    slot = SLOT_YAW
                else:
                    slot = SLOT_NONE
                if str(v) not in self._index:
                    raise ValueError(f"answer number {v} has no location token (pixels 0..{PIXEL_MAX}, "
                                     f"yaw -{YAW_LIMIT}..{YAW_LIMIT})")
                ids.append(self._index[str(v)])
                slots.append(slot)
                values.append(v)
                pos += len(m.group())
                last = "num"
                continue
            for p in pieces:
                if answer.startswith(p, pos):
                    ids.append(self._answer[p])
                    slots.append(SLOT_NONE)
                    values.append(0)
                    pos += len(p)
                    last = p
                    break
            else:
                raise ValueError(f"answer {answer!r}: cannot tokenise at {answer[pos:pos + 20]!r}")
        ids.append(EOS)
        slots.append(SLOT_NONE)
        values.append(0)
        return ids, slots, values


def _f32(x: float) -> float:
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]
