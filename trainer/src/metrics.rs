//! Validation metrics, computed the way scikit-learn defines them.

use serde::{Deserialize, Serialize};

/// Metrics of one evaluation. Fields that do not apply to the task are absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    /// Binary classification only: area under the ROC curve of the positive class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// Macro averages over classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
}

impl Metrics {
    /// Every value to 12 significant digits, so it reads back from JSON unchanged.
    fn stored(mut self) -> Self {
        for v in [&mut self.accuracy, &mut self.log_loss, &mut self.roc_auc, &mut self.precision, &mut self.recall, &mut self.f1, &mut self.rmse, &mut self.mae, &mut self.r2] {
            *v = v.map(crate::data::stored);
        }
        self
    }
}

/// `probabilities` is row-major `[n × k]`; `truth` holds class indices.
pub fn classification(probabilities: &[f32], k: usize, truth: &[usize]) -> Metrics {
    let n = truth.len();
    if n == 0 || k == 0 {
        return Metrics::default();
    }
    let predicted: Vec<usize> = (0..n)
        .map(|i| {
            let row = &probabilities[i * k..(i + 1) * k];
            // The first of equal maxima, as argmax does elsewhere.
            (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best })
        })
        .collect();
    let correct = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    let eps = 1e-15f64;
    let log_loss = (0..n).map(|i| -(f64::from(probabilities[i * k + truth[i]]).clamp(eps, 1.0 - eps)).ln()).sum::<f64>() / n as f64;

    // Macro precision/recall/F1 over classes present in truth or predictions.
    let (mut p_sum, mut r_sum, mut f_sum, mut classes) = (0.0, 0.0, 0.0, 0);
    for c in 0..k {
        let tp = (0..n).filter(|&i| predicted[i] == c && truth[i] == c).count() as f64;
        let predicted_c = predicted.iter().filter(|&&p| p == c).count() as f64;
        let actual_c = truth.iter().filter(|&&t| t == c).count() as f64;
        if predicted_c == 0.0 && actual_c == 0.0 {
            continue;
        }
        let precision = if predicted_c > 0.0 { tp / predicted_c } else { 0.0 };
        let recall = if actual_c > 0.0 { tp / actual_c } else { 0.0 };
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        p_sum += precision;
        r_sum += recall;
        f_sum += f1;
        classes += 1;
    }
    let m = f64::from(classes.max(1));
    Metrics {
        accuracy: Some(correct as f64 / n as f64),
        log_loss: Some(log_loss),
        roc_auc: if k == 2 { roc_auc(&(0..n).map(|i| probabilities[i * 2 + 1]).collect::<Vec<_>>(), &truth.iter().map(|&t| t == 1).collect::<Vec<_>>()) } else { None },
        precision: Some(p_sum / m),
        recall: Some(r_sum / m),
        f1: Some(f_sum / m),
        ..Default::default()
    }
    .stored()
}

/// ROC AUC by ranks (ties share their average rank); `None` when one class is absent.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += (i..=j).filter(|&x| positive[order[x]]).count() as f64 * average_rank;
        i = j + 1;
    }
    Some((rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

pub fn regression(predicted: &[f64], truth: &[f64]) -> Metrics {
    let n = truth.len();
    if n == 0 {
        return Metrics::default();
    }
    let nf = n as f64;
    let mse = predicted.iter().zip(truth).map(|(p, t)| (p - t) * (p - t)).sum::<f64>() / nf;
    let mae = predicted.iter().zip(truth).map(|(p, t)| (p - t).abs()).sum::<f64>() / nf;
    let mean = truth.iter().sum::<f64>() / nf;
    let total = truth.iter().map(|t| (t - mean) * (t - mean)).sum::<f64>();
    let r2 = if total > 0.0 { 1.0 - mse * nf / total } else { 0.0 };
    Metrics { rmse: Some(mse.sqrt()), mae: Some(mae), r2: Some(r2), ..Default::default() }.stored()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_the_textbook_example() {
        // scikit-learn's roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        let m = classification(&[0.3, 0.7, 0.6, 0.4, 0.1, 0.9], 2, &[1, 0, 1]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m, "metrics read back exactly");
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5), "ties count half");
        assert_eq!(roc_auc(&[0.1], &[true]), None);
    }

    #[test]
    fn classification_metrics() {
        // Three rows, three classes; row 2 is wrong (predicted 0, truth 2).
        let p = [0.8, 0.1, 0.1, 0.1, 0.8, 0.1, 0.6, 0.1, 0.3];
        let m = classification(&p, 3, &[0, 1, 2]);
        assert!((m.accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-11);
        // precision: c0 1/2, c1 1, c2 0 -> 0.5; recall: 1, 1, 0 -> 2/3
        assert!((m.precision.unwrap() - 0.5).abs() < 1e-12);
        assert!((m.recall.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let expected_loss = -(0.8f32.ln() as f64 + 0.8f32.ln() as f64 + 0.3f32.ln() as f64) / 3.0;
        assert!((m.log_loss.unwrap() - expected_loss).abs() < 1e-6);
    }

    #[test]
    fn regression_metrics() {
        let m = regression(&[2.0, 4.0], &[1.0, 5.0]);
        assert_eq!((m.rmse, m.mae), (Some(1.0), Some(1.0)));
        assert_eq!(m.r2, Some(0.75));
    }
}
