//! The demo's picture: what the run proved, as one SVG.
//!
//! Sans-IO: the demo collects a [`Timeline`] (arrivals by origin, the drops
//! it injected, samples of the verified watermark, gap markers) and
//! [`Timeline::svg`] draws it with `plotters`. Two panels on one time axis
//! (seconds since the run started): events per second by how they arrived,
//! with the injected drops; and how far the poller had verified, against
//! the clock.

use plotters::prelude::*;

/// What happened in a demo run, in seconds since it started.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// When each event was stored, by how it came: MQTT or the poller.
    pub via_mqtt: Vec<f64>,
    pub via_poll: Vec<f64>,
    /// When the simulator dropped a message it should have published.
    pub drops: Vec<f64>,
    /// (when sampled, verified up to): the poller's watermark.
    pub verified: Vec<(f64, f64)>,
    /// Gap markers' spans (from, to).
    pub gaps: Vec<(f64, f64)>,
}

/// Counts per whole second, `0..len`.
fn per_second(times: &[f64], len: usize) -> Vec<u32> {
    let mut out = vec![0u32; len];
    for &t in times {
        if t >= 0.0 && (t as usize) < len {
            out[t as usize] += 1;
        }
    }
    out
}

impl Timeline {
    /// The run's length in whole seconds (at least 1).
    fn seconds(&self) -> usize {
        let last = [&self.via_mqtt, &self.via_poll, &self.drops]
            .iter()
            .flat_map(|v| v.iter())
            .chain(self.verified.iter().map(|(t, _)| t))
            .fold(0.0f64, |a, &b| a.max(b));
        last.ceil() as usize + 1
    }

    /// Draws the picture as SVG text.
    pub fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        let len = self.seconds();
        let series = [
            ("stored via MQTT", per_second(&self.via_mqtt, len), BLUE),
            (
                "recovered by the poller",
                per_second(&self.via_poll, len),
                GREEN,
            ),
            (
                "dropped on MQTT (injected)",
                per_second(&self.drops, len),
                RED,
            ),
        ];
        let top = series
            .iter()
            .flat_map(|(_, v, _)| v.iter())
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        let x_max = len as f64;
        {
            let root = SVGBackend::with_string(&mut out, (900, 560)).into_drawing_area();
            let e = |e: DrawingAreaErrorKind<_>| e.to_string();
            root.fill(&WHITE).map_err(e)?;
            let root = root
                .titled(
                    "gapless demo: every event, once, in order",
                    ("sans-serif", 20),
                )
                .map_err(e)?;
            let (upper, lower) = root.split_vertically(330);

            let mut rates = ChartBuilder::on(&upper)
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..x_max, 0.0..f64::from(top) * 1.15)
                .map_err(e)?;
            rates
                .configure_mesh()
                .y_desc("events per second")
                .x_desc("seconds since the run started")
                .draw()
                .map_err(e)?;
            for &(from, to) in &self.gaps {
                rates
                    .draw_series(std::iter::once(Rectangle::new(
                        [(from, 0.0), (to.max(from + 0.2), f64::from(top) * 1.15)],
                        RGBColor(255, 165, 0).mix(0.3).filled(),
                    )))
                    .map_err(e)?
                    .label("gap marker (events may be missing)")
                    .legend(|(x, y)| {
                        Rectangle::new(
                            [(x, y - 5), (x + 15, y + 5)],
                            RGBColor(255, 165, 0).filled(),
                        )
                    });
            }
            for (label, counts, color) in &series {
                rates
                    .draw_series(LineSeries::new(
                        counts
                            .iter()
                            .enumerate()
                            .map(|(s, &n)| (s as f64 + 0.5, f64::from(n))),
                        color.stroke_width(2),
                    ))
                    .map_err(e)?
                    .label(*label)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2))
                    });
            }
            rates
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(e)?;

            let mut verified = ChartBuilder::on(&lower)
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..x_max, 0.0..x_max)
                .map_err(e)?;
            verified
                .configure_mesh()
                .y_desc("verified up to (s)")
                .x_desc("seconds since the run started")
                .draw()
                .map_err(e)?;
            verified
                .draw_series(LineSeries::new(
                    [(0.0, 0.0), (x_max, x_max)],
                    BLACK.mix(0.4).stroke_width(1),
                ))
                .map_err(e)?
                .label("now")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK.mix(0.4)));
            verified
                .draw_series(LineSeries::new(
                    self.verified.iter().map(|&(t, v)| (t, v.max(0.0))),
                    MAGENTA.stroke_width(2),
                ))
                .map_err(e)?
                .label("verified watermark (the poller checked the audit trail up to here)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], MAGENTA.stroke_width(2)));
            verified
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(e)?;
            root.present().map_err(e)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_into_their_second() {
        assert_eq!(
            per_second(&[0.1, 0.9, 1.0, 2.5, -1.0, 9.0], 3),
            vec![2, 1, 1]
        );
    }

    #[test]
    fn the_picture_names_every_series_and_draws_a_gap() {
        let t = Timeline {
            via_mqtt: (0..100).map(|i| f64::from(i) / 10.0).collect(),
            via_poll: vec![4.2, 4.3],
            drops: vec![1.5, 2.5],
            verified: vec![(0.0, -1.0), (5.0, 3.0), (10.0, 8.0)],
            gaps: vec![(6.0, 7.0)],
        };
        let svg = t.svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for label in [
            "stored via MQTT",
            "recovered by the poller",
            "dropped on MQTT (injected)",
            "verified watermark",
            "gap marker",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
