//! The overview's throughput chart: the last hour per minute as an inline SVG, drawn on the
//! server so the page needs no charting script. Styled by class from `app.css` (the CSP
//! allows no inline styles).

use maud::{Markup, html};

use super::types::MinuteBody;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 8.0;

/// A round number at or above `n`, so the axis reads 5, 10, 50, 100, …
fn nice_ceiling(n: u64) -> u64 {
    let n = n.max(1);
    let mut step = 1;
    loop {
        for m in [1, 2, 5] {
            if m * step >= n {
                return m * step;
            }
        }
        step *= 10;
    }
}

fn number(n: f64) -> String {
    format!("{n:.1}")
}

/// Stacked bars of done (below) and failed attempts (above) per minute, and a line of jobs
/// enqueued per minute.
pub fn throughput(minutes: &[MinuteBody]) -> Markup {
    let peak = minutes
        .iter()
        .map(|m| (m.done + m.failed).max(m.enqueued))
        .max()
        .unwrap_or(0);
    let top = nice_ceiling(peak);
    let plot_h = HEIGHT - BOTTOM - TOP;
    let plot_w = WIDTH - LEFT - 4.0;
    let slot = plot_w / minutes.len().max(1) as f64;
    let y = |v: u64| TOP + plot_h - (v as f64 / top as f64) * plot_h;
    let enqueued_line: Vec<String> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "{},{}",
                number(LEFT + slot * (i as f64 + 0.5)),
                number(y(m.enqueued))
            )
        })
        .collect();
    let label = format!(
        "Throughput over the last hour: {} done, {} failed attempts, {} enqueued",
        minutes.iter().map(|m| m.done).sum::<u64>(),
        minutes.iter().map(|m| m.failed).sum::<u64>(),
        minutes.iter().map(|m| m.enqueued).sum::<u64>(),
    );
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            role="img" aria-label=(label) {
            title { (label) }
            line.axis x1=(LEFT) y1=(number(y(0))) x2=(WIDTH - 4.0) y2=(number(y(0))) {}
            line.grid x1=(LEFT) y1=(number(y(top))) x2=(WIDTH - 4.0) y2=(number(y(top))) {}
            line.grid x1=(LEFT) y1=(number(y(top / 2))) x2=(WIDTH - 4.0) y2=(number(y(top / 2))) {}
            text.tick x=(LEFT - 6.0) y=(number(y(top) + 4.0)) text-anchor="end" { (top) }
            text.tick x=(LEFT - 6.0) y=(number(y(0) + 4.0)) text-anchor="end" { "0" }
            text.tick x=(LEFT) y=(HEIGHT - 4.0) { "60 min ago" }
            text.tick x=(WIDTH - 4.0) y=(HEIGHT - 4.0) text-anchor="end" { "now" }
            @for (i, m) in minutes.iter().enumerate() {
                @let x = LEFT + slot * i as f64 + 1.0;
                @let w = (slot - 2.0).max(1.0);
                g.minute {
                    title {
                        (m.minute.format("%H:%M UTC")) ": " (m.done) " done, "
                        (m.failed) " failed attempts, " (m.enqueued) " enqueued"
                    }
                    // An invisible full-height target, so every minute has a tooltip.
                    rect.hover x=(number(x)) y=(TOP) width=(number(w)) height=(number(plot_h)) {}
                    @if m.done > 0 {
                        rect.bar-done x=(number(x)) y=(number(y(m.done))) width=(number(w))
                            height=(number(y(0) - y(m.done))) {}
                    }
                    @if m.failed > 0 {
                        rect.bar-failed x=(number(x)) y=(number(y(m.done + m.failed))) width=(number(w))
                            height=(number(y(m.done) - y(m.done + m.failed))) {}
                    }
                }
            }
            polyline.line-enqueued points=(enqueued_line.join(" ")) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(500), 500);
        assert_eq!(nice_ceiling(501), 1000);
    }
}
