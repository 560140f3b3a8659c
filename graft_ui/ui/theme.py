"""Graft Studio's look: a Soft theme in an emerald/teal brand colour, CSS and the header."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

ASSETS = Path(__file__).resolve().parents[2] / "assets"
BRAND_CSS = ASSETS / "style.css"
LAYOUT_CSS = ASSETS / "layout.css"  # unscoped: the page frame, phone widths, tables
LOGO = ASSETS / "logo.svg"


def theme() -> gr.themes.Theme:
    # system fonts only: the app must look right offline (no font downloads)
    return gr.themes.Soft(
        primary_hue="emerald",
        secondary_hue="teal",
        neutral_hue="slate",
        radius_size="md",
        spacing_size="md",
        text_size="md",
        font=["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    ).set(
        body_background_fill="*neutral_50",
        block_radius="*radius_lg",
        block_border_width="1px",
        block_border_color="*neutral_200",
        block_shadow="0 1px 2px 0 rgb(15 23 42 / 0.04)",
        button_primary_background_fill="*primary_600",
        button_primary_background_fill_hover="*primary_700",
        button_primary_text_color="white",
        block_title_text_color="*neutral_700",
        block_label_text_color="*neutral_600",
        block_label_background_fill="*neutral_100",
        block_title_background_fill="transparent",
        input_border_color="*neutral_200",
    )


def css() -> str:
    return BRAND_CSS.read_text() if BRAND_CSS.is_file() else ""


def head_html() -> str:
    """A <style> for <head>: gradio scopes `css` under `.gradio-container .contain`, so rules for the
    page frame itself (its width on a phone) go here, unscoped."""
    return f"<style>{LAYOUT_CSS.read_text()}</style>" if LAYOUT_CSS.is_file() else ""


def logo_svg() -> str:
    return LOGO.read_text() if LOGO.is_file() else ""


def header_html(device_label: str, manifest_name: str, n_experts: int, n_variants: int) -> str:
    gpu = device_label.startswith("CUDA")
    badge = "gs-badge-gpu" if gpu else "gs-badge-cpu"
    return f"""
<div class="gs-header">
  <div class="gs-brand">{logo_svg()}
    <div><div class="gs-title">Graft Studio</div>
    <div class="gs-subtitle">Fuse domain experts of a vision-language model — inspect, fuse, compare</div></div>
  </div>
  <div class="gs-status">
    <span class="gs-chip" title="active model set"><b>{html.escape(manifest_name)}</b> · {n_experts} experts · {n_variants} fused</span>
    <span class="gs-badge {badge}" id="gs-device" title="where fusion, analysis and chat run"><span class="gs-dot"></span>{html.escape(device_label)}</span>
  </div>
</div>"""
