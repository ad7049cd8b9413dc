"""Deterministic orders for the simulator: the same (seed, id, epoch) always gives the same order.

Tests call :func:`wdk_order` / :func:`omni_order` for the order the simulator serves for an id.
Orders are generated in the simplified shape; :func:`wrap_lists` turns them into the default one.

Id scheme (so any of the three wdk id kinds finds the same order):
``tb_biz_order_id = TB_BASE + biz_order_id`` and ``out_order_id = "ele" + biz_order_id``;
sub-order ids are ``SUB_BASE + biz_order_id * 16 + i``.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from typing import Any

import orjson

from etl.top.envelope import LIST_FIELDS

TB_BASE = 3_725_362_000_000_000_000
SUB_BASE = 600_000_000_000_000_000
MAX_BIZ_ID = 10**17  # biz ids are below this (demo ids have 15 digits, like 500031414182214;
# larger ones, above 2**53, exist too so exact id handling is tested end to end)
FIRST_DEMO_BIZ_ID = 500_031_414_182_214

STORES = ["CSDRF01001", "CSDRF01002", "HZXH02001", "SHPD03001", "BJCY04001"]
SHOPS = {
    "CSDRF01001": "12343561",
    "CSDRF01002": "12343562",
    "HZXH02001": "22343561",
    "SHPD03001": "32343561",
    "BJCY04001": "42343561",
}
ITEMS = [
    (101292002, "098771", "有机菠菜 300g", 1280, None),
    (103074008, "100231", "盒马鲜牛奶 950ml", 1590, None),
    (101294003, "100562", "泰国金枕榴莲", 3990, "kg"),
    (103082007, "100788", "智利车厘子 JJ级", 8990, "kg"),
    (103138010, "101003", "东北五常大米 5kg", 6990, None),
    (104001001, "101120", "挪威三文鱼刺身", 4590, "kg"),
    (104223005, "101377", "农夫山泉 550ml*24", 3690, None),
    (105100200, "101589", "散装鸡蛋", 1290, "kg"),
]
STATUSES = ["PAID", "PACKAGED", "DELIVERING", "SUCCESS"]
OPERATORS = ["张三", "李四", "王五", "赵六"]
PAY_TYPES = [11, 6, 0, 4, 15, 9]
GUIDES = ["导购小王", "导购小李", "导购小陈"]
OMNI_SHOPS = [("105565032", "杭州西湖店"), ("105565033", "上海静安店"), ("105565034", "北京朝阳店")]

# The malformed blobs the API pages themselves show.
BAD_PAY_ATTRIBUTES = '“{\\"btn\\":\\"C001\\"}'
BAD_STATUS_CHANGE = '{"PACKAGED":"2020-01-01 15:23:29",}'


def _h(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def exists(seed: int, key: str, missing_rate: float) -> bool:
    """Whether the order keyed ``key`` exists (a fixed fraction ``missing_rate`` does not)."""
    return (_h(seed, "exists", key) % 1_000_000) >= missing_rate * 1_000_000


def biz_id_for(id_kind: str, value: str) -> int | None:
    """The biz_order_id an id of ``id_kind`` names, or None if it names none."""
    try:
        if id_kind == "biz":
            biz = int(value)
        elif id_kind == "tb_biz":
            biz = int(value) - TB_BASE
        elif id_kind == "out_order":
            if not value.startswith("ele"):
                return None
            biz = int(value[3:])
        else:
            return None
    except ValueError:
        return None
    return biz if 0 < biz < MAX_BIZ_ID else None


def _status(seed: int, key: str, epoch: int, change_rate: float, rng: random.Random) -> int:
    """Status index: starts random, and moves on by one in each epoch for a share of orders."""
    index = rng.randrange(len(STATUSES) - 1)
    for e in range(1, epoch + 1):
        if (_h(seed, "change", key, e) % 1000) < change_rate * 1000:
            index = min(index + 1, len(STATUSES) - 1)
    return index


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def wdk_order(
    biz_order_id: int, seed: int = 0, epoch: int = 0, change_rate: float = 0.1
) -> dict[str, Any]:
    """The alibaba.wdk.order.get order the simulator serves for ``biz_order_id``."""
    rng = random.Random(f"{seed}:wdk:{biz_order_id}")
    key = str(biz_order_id)
    store = rng.choice(STORES)
    refund = rng.random() < 0.05
    trd_type = 2 if refund else 1
    pay_time = datetime(2024, 1, 1) + timedelta(seconds=rng.randrange(366 * 86400))
    status_index = _status(seed, key, epoch, change_rate, rng)
    subs = [
        _sub_order(rng, biz_order_id, i, store, trd_type, status_index, pay_time)
        for i in range(rng.randint(1, 10))
    ]
    original = sum(s["original_amt"] for s in subs)
    promo = sum(s["promotion_discount_amt"] for s in subs)
    member = sum(s["member_discount_amt"] for s in subs)
    share = sum(s["share_discount_amt"] for s in subs)
    post_fee = 0 if refund else rng.choice([0, 0, 500, 800])
    pay_amt = original - promo - member - share + post_fee
    order: dict[str, Any] = {
        "biz_order_id": biz_order_id,
        "discount_amt": promo + share,
        "original_amt": original,
        "pay_channels": _pay_channels(rng, biz_order_id, store, trd_type, pay_amt),
        "pay_time": _fmt(pay_time),
        "post_fee": post_fee,
        "store_id": store,
        "sub_orders": subs,
        "trd_type": trd_type,
        "member_discount_amt": member,
        "member_card_num": f"M{rng.randrange(10**9):09d}" if rng.random() < 0.6 else "",
        "operator_id": str(rng.randint(10, 99)),
        "tb_biz_order_id": TB_BASE + biz_order_id,
        "operator_name": rng.choice(OPERATORS),
        "merchant_code": "CSSJ",
        "order_status": STATUSES[status_index],
        "member_point": f"{rng.randint(0, 500) / 10:.1f}",
        "package_time": _fmt(pay_time + timedelta(minutes=rng.randint(5, 50))),
        "gift_coupon": f"{rng.randrange(10**6)}_{rng.choice([500, 1000])}"
        if rng.random() < 0.1
        else "",
        "duty_code": hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()[:16],
        "trade_attributes": _trade_attributes(rng),
        "open_uid": f"AAG{_h(seed, 'uid', key) % 10**10:010d}",
        "order_from": 3,
        "shop_id": SHOPS[store],
        "out_shop_id": store[-4:],
        "out_order_id": f"ele{biz_order_id}",
        "order_client": rng.choice(["app", "pos"]),
        "pay_amt": pay_amt,
    }
    return order


def _trade_attributes(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.03:
        return '{"wdkMemberSource":"phoneNum",}'  # trailing comma, as the pages show
    if roll < 0.05:
        return ""
    return orjson.dumps(
        {"wdkMemberSource": rng.choice(["phoneNum", "carNum"]), "memDegrade": "0"}
    ).decode()


def _sub_order(
    rng: random.Random,
    biz: int,
    i: int,
    store: str,
    trd_type: int,
    status_index: int,
    pay_time: datetime,
) -> dict[str, Any]:
    item_code, sku, _title, price, unit = rng.choice(ITEMS)
    weighed = unit is not None
    if weighed:
        grams = rng.randint(200, 3000)
        ns_quantity = f"{grams / 1000:.3f}"
        quantity = 1
        original = round(price * grams / 1000)
    else:
        ns_quantity = ""
        quantity = rng.randint(1, 5)
        original = price * quantity
    promo = rng.choice([0, 0, 0, round(original * 0.1)])
    member = rng.choice([0, 0, round(original * 0.05)])
    share = rng.choice([0, 0, 0, 50]) if original > 200 else 0
    pay = original - promo - member - share
    status_change = {"PAID": _fmt(pay_time)}
    if status_index >= 1:
        status_change["PACKAGED"] = _fmt(pay_time + timedelta(minutes=15))
    status_text = orjson.dumps(status_change).decode()
    if rng.random() < 0.03:
        status_text = BAD_STATUS_CHANGE
    return {
        "biz_order_id": SUB_BASE + biz * 16 + i,
        "promotion_discount_amt": promo,
        "item_code": item_code,
        "original_amt": original,
        "parent_id": biz,
        "price": price,
        "promotion_info": '[{"activity_id":"1234","activity_name":"五一促销","activity_type":1}]'
        if promo
        else "",
        "quantity": quantity,
        "store_id": store,
        "trd_type": trd_type,
        "member_discount_amt": member,
        "share_discount_amt": share,
        "sell_unit": unit or "",
        "ns_quantity": ns_quantity,
        "tb_biz_order_id": TB_BASE + SUB_BASE // 1000 + biz * 16 + i,
        "pick_amount_stock": ns_quantity or str(quantity),
        "buy_amount_stock": ns_quantity or str(quantity),
        "member_point": str(pay // 100),
        "order_type": "GIFT" if pay == 0 else "COMMON",
        "txd_pmt_amt": rng.choice([0, 0, 100]) if promo else 0,
        "pick_amt": pay,
        "order_status": STATUSES[status_index],
        "status_change_time": status_text,
        "stock_unit": unit or "件",
        "sale_unit": "g" if weighed else "件",
        "trade_sub_attributes": '{"point":"2"}' if rng.random() < 0.3 else "{}",
        "sku_code": sku,
        "out_order_id": f"ele{biz}",
        "out_sku_code": str(item_code)[-3:],
    }


def _pay_channels(
    rng: random.Random, biz: int, store: str, trd_type: int, total: int
) -> list[dict[str, Any]]:
    n = rng.randint(1, 3) if total >= 3 else 1
    cuts = sorted(rng.sample(range(1, total), n - 1)) if n > 1 else []
    amounts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    channels = []
    for amount in amounts:
        pay_type = rng.choice(PAY_TYPES)
        bad = rng.random() < 0.03
        channels.append(
            {
                "biz_order_id": biz,
                "order_channel": rng.choice(["APP|淘宝", "POS|三江购物网", "APP|盒马"]),
                "pay_amount": amount,
                "pay_type": pay_type,
                "pos_no": f"POS{rng.randint(1, 40):03d}" if pay_type in (0, 4, 15) else "",
                "store_id": store,
                "trd_type": trd_type,
                "actual_pay_amount": amount,
                "adjust_amount": 0,
                "promotion_card_info": "",
                "pay_attributes": BAD_PAY_ATTRIBUTES
                if bad
                else orjson.dumps({"tno": "2088102", "tsn": f"2024{biz % 10**9:09d}"}).decode(),
                "pmt_alipay_promotion_amt": 0,
                "pmt_alipay_reduce_amt": rng.choice([0, 0, 0, 10]) if pay_type == 11 else 0,
                "pmt_koubei_coupon_amt": 0,
                "koubei_coupon_info": "[]",
            }
        )
    return channels


def omni_order_id(n: int) -> str:
    """The n-th demo omni order id (18 digits, like 108717674563804955)."""
    return str(108_717_674_563_804_955 + n * 1_000_003)


def omni_order(
    order_id: str,
    user_id: str = "3031798632",
    out_order_id: str = "",
    seed: int = 0,
    epoch: int = 0,
    change_rate: float = 0.1,
) -> dict[str, Any]:
    """The alibaba.omni.order.query model the simulator serves for ``order_id``."""
    rng = random.Random(f"{seed}:omni:{order_id}")
    shop_id, shop_name = rng.choice(OMNI_SHOPS)
    item_code, sku, title, price, _unit = rng.choice(ITEMS)
    total = price * rng.randint(1, 3)
    voucher = rng.choice([0, 0, 500, 1000])
    stages = rng.randint(1, 2)
    stage_fees = [total - voucher] if stages == 1 else [1000, total - voucher - 1000]
    paid_at = datetime(2024, 1, 1) + timedelta(seconds=rng.randrange(366 * 86400))
    status = 8 if _status(seed, order_id, epoch, change_rate, rng) >= 1 else 2
    model: dict[str, Any] = {
        "order_id": order_id,
        "alipay_order_id": f"2024{int(order_id) % 10**24:024d}",
        "out_order_id": out_order_id or f"OUT{order_id[-8:]}",
        "o2o_guide_id": int(user_id) if user_id.isdigit() else 3031798632,
        "o2o_guide_name": rng.choice(GUIDES),
        "o2o_shop_id": shop_id,
        "o2o_shop_name": shop_name,
        "item_id": 560_540_000_000 + item_code % 10**6,
        "item_title": title,
        "sku_id": sku,
        "sku_properties_name": rng.choice(["", "规格:标准装", "“”"]),
        "contract_price": total,
        "total_fee": total,
        "voucher_price": voucher,
        "pay_status": status,
        "subpay_order_list": [
            {
                "step_no": step + 1,
                "subpay_order_id": 968_772_003_804_955 + (int(order_id) % 10**9) * 4 + step,
                "pay_status": 1,
                "pay_type": rng.choice([1, 2]),
                "total_fee": fee,
                "disburse_status": rng.choice(["0", "1"]),
            }
            for step, fee in enumerate(stage_fees)
        ],
        "can_close": status != 8,
        "pay_order_serial_infos": [
            {
                "pay_serial_no": f"15383639396130{(int(order_id) + step) % 10**14:014d}",
                "step_no": step + 1,
                "batch_no": step + 1,
                "paid_money": fee,
                "pay_time": _fmt(paid_at + timedelta(hours=step)),
                "sync_time": _fmt(paid_at + timedelta(hours=step, seconds=5)),
                "pay_type": 1,
                "pay_status": 1,
            }
            for step, fee in enumerate(stage_fees)
        ],
    }
    if voucher:
        model["promotion_info"] = {
            "promotion_id": 1111 + voucher,
            "promotion_amount": voucher,
            "promotion_type": rng.choice([0, 1]),
            "promotion_order_id": int(order_id) % 10**9,
            "promotion_buy_amount": total,
        }
    return model


def wrap_lists(value: Any) -> Any:
    """Simplified shape → default shape (arrays wrapped by item type; empty lists as ``{}``)."""
    if isinstance(value, list):
        return [wrap_lists(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in LIST_FIELDS and isinstance(item, list):
            out[key] = {LIST_FIELDS[key]: [wrap_lists(v) for v in item]} if item else {}
        else:
            out[key] = wrap_lists(item)
    return out
