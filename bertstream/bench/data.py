"""The benchmark's texts and eval sets, built deterministically from the demo data.

- short: news-like headlines (the first sentence of each bertstream/demo/data/news.jsonl item);
- chinese: short Chinese news-like headlines written for the bench (the multilingual encoder);
- long: email-like texts of several hundred tokens (paragraphs of bertstream/demo/data/email.jsonl,
  with a greeting and a sign-off), several 256-token windows each;
- every text of a run ends with a reference tag (run id + index), so that a Redis which already
  holds results of an earlier run cannot warm the cold-cache figures.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from bertstream.demo import DATA as DEMO_DATA

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _demo_texts(name: str) -> list[str]:
    return [json.loads(line)["text"] for line in (DEMO_DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def headlines() -> list[str]:
    return [_SENTENCE.split(text.strip(), maxsplit=1)[0] for text in _demo_texts("news")]


def short_texts(n: int, tag: str) -> list[str]:
    base = headlines()
    return [f"{base[i % len(base)]} (ref {tag}-{i})" for i in range(n)]


def long_texts(n: int, tag: str, chars: int = 3000, seed: int = 7) -> list[str]:
    emails = _demo_texts("email")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = ["Hi all,"]
        while sum(len(p) + 2 for p in parts) < chars:
            parts.append(rng.choice(emails))
        parts.append(f"Best regards,\nSam (ref {tag}-{i})")
        out.append("\n\n".join(parts))
    return out


# Short Chinese news-like headlines, written for the bench (the multilingual encoder's rows).
CHINESE_HEADLINES = (
    "央行宣布下调存款准备金率以支持实体经济",
    "国际油价连续三日上涨，市场关注产油国会议",
    "多地出台新政促进新能源汽车消费",
    "科技公司第三季度营收超出市场预期",
    "暴雨天气影响南方多个城市交通出行",
    "国家队在亚洲杯小组赛中两球获胜",
    "研究人员发现一种新的抗生素候选分子",
    "沪深股市今日收涨，成交额明显放大",
    "铁路部门增开列车应对节假日客流高峰",
    "新一代人工智能芯片正式发布",
    "粮食产量再创新高，秋收工作进展顺利",
    "外资企业加大在华投资力度",
    "城市更新项目改善老旧小区居住条件",
    "航空公司宣布开通多条国际新航线",
    "教育部发布关于减轻学生作业负担的通知",
    "房地产市场成交量环比小幅回升",
    "气象台发布高温橙色预警",
    "跨境电商出口订单保持快速增长",
    "医疗改革试点扩大至更多省份",
    "新能源发电装机容量突破历史纪录",
    "消费者权益保护新规下月起施行",
    "汽车制造商召回部分存在安全隐患的车辆",
    "文旅市场持续升温，景区游客数量大增",
    "专家建议加强个人信息保护立法",
)


def chinese_texts(n: int, tag: str) -> list[str]:
    return [f"{CHINESE_HEADLINES[i % len(CHINESE_HEADLINES)]}（参考 {tag}-{i}）" for i in range(n)]


def events(texts: list[str], id_prefix: str) -> list[tuple[str, bytes]]:
    """(id, JSON event bytes) per text."""
    out = []
    for i, text in enumerate(texts):
        event_id = f"{id_prefix}-{i}"
        out.append((event_id, json.dumps({"id": event_id, "text": text, "metadata": {"bench": id_prefix}}).encode()))
    return out


@dataclass
class EvalSet:
    task: str  # the head it scores
    dataset: str
    texts: list[str]
    labels: list[str]


def eval_sets(tasks: list[str], per_set: int, seed: int = 20240601) -> tuple[list[EvalSet], str]:
    """Labelled test splits for the heads that have one (sentiment: VADER, spam: SMS spam).

    Returns the sets and a note; empty when no head has a labelled set or the data is not fetched
    (`bertstream data vader sms_spam` fetches it).
    """
    try:
        from pipelines.training import datasets
    except ImportError as exc:  # pragma: no cover - pipelines.datasets is part of the package
        return [], f"pipelines.datasets unavailable: {exc}"
    wanted = {"sentiment": "vader", "spam": "sms_spam"}
    out: list[EvalSet] = []
    notes = []
    for task, name in wanted.items():
        if task not in tasks:
            continue
        if not datasets.is_fetched(name):
            notes.append(f"{name} not fetched (run `bertstream data {name}`)")
            continue
        test = datasets.load(name).test
        rng = random.Random(seed)
        sample = rng.sample(test, min(per_set, len(test)))
        out.append(EvalSet(task, name, [t for t, _ in sample], [label for _, label in sample]))
    return out, "; ".join(notes)


def mean_tokens(tokenizer: Any, texts: list[str], limit: int = 200) -> float:
    sample = texts[:limit]
    if not sample:
        return 0.0
    ids = tokenizer(sample, add_special_tokens=True, truncation=False)["input_ids"]
    return sum(len(x) for x in ids) / len(ids)
