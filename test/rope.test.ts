// RoPE inverse frequencies and cos/sin tables against values worked out by hand from the HF formulas.
import { describe, expect, it } from 'vitest';
import { positionRange, ropeInvFreq, ropeTables } from '../src/model/rope.js';

/** |a - b| <= rel * |b|: float32 rounding of a few operations stays far under 1e-6. */
function expectRel(a: number, b: number, rel = 1e-6): void {
  expect(Math.abs(a - b)).toBeLessThanOrEqual(rel * Math.abs(b));
}

describe('ropeInvFreq', () => {
  it('default: theta^(-2i/d)', () => {
    const inv = ropeInvFreq({ headDim: 8, ropeTheta: 10000, ropeScaling: null });
    // 10000^0, 10000^-0.25, 10000^-0.5, 10000^-0.75
    [1, 0.1, 0.01, 0.001].forEach((v, i) => expectRel(inv[i], v));
  });

  it('linear: default divided by factor', () => {
    const inv = ropeInvFreq({ headDim: 8, ropeTheta: 10000, ropeScaling: { type: 'linear', factor: 4 } });
    [0.25, 0.025, 0.0025, 0.00025].forEach((v, i) => expectRel(inv[i], v));
  });

  it('llama3 (Llama 3.1: theta 5e5, factor 8, low 1, high 4, original 8192, headDim 128)', () => {
    const inv = ropeInvFreq({
      headDim: 128, ropeTheta: 500000,
      ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    });
    // Wavelengths 2*pi/inv: under 8192/4 = 2048 kept, over 8192/1 divided by 8, smooth in between.
    // i = 0: 5e5^0 = 1, wavelength 6.28: kept.
    expectRel(inv[0], 1);
    // i = 10: 5e5^(-20/128) = 0.128687373, wavelength 48.8: kept.
    expectRel(inv[10], 0.128687373);
    // i = 28: 5e5^(-56/128) = 0.00321144599, wavelength 1956.5 < 2048: kept (the last high-frequency one).
    expectRel(inv[28], 0.00321144599);
    // i = 30: 5e5^(-60/128) = 0.00213111954, wavelength 2948.30;
    //   smooth = (8192 / 2948.30 - 1) / 3 = 0.592849; inv * ((1 - smooth) / 8 + smooth) = 0.00137189357.
    expectRel(inv[30], 0.00137189357);
    // i = 34: 5e5^(-68/128) = 0.000938473870, wavelength 6695.1; smooth = 0.074527 -> 0.000178507813.
    expectRel(inv[34], 0.000178507813);
    // i = 35: 5e5^(-70/128) = 0.000764496988, wavelength 8218.7 > 8192: divided by 8 -> 9.55621235e-5.
    expectRel(inv[35], 9.55621235e-5);
    // i = 40: 5e5^(-80/128) = 0.000274248176 / 8 = 3.42810220e-5.
    expectRel(inv[40], 3.4281022e-5);
    // i = 63: 5e5^(-126/128) = 2.45514079e-6 / 8 = 3.06892599e-7.
    expectRel(inv[63], 3.06892599e-7);
  });

  it('llama3 is continuous at both band edges (smooth = 0 gives inv/8, smooth = 1 gives inv)', () => {
    // headDim 2 has one frequency, inv = 1, wavelength 2*pi. Choose original lengths that put 2*pi exactly on an edge.
    const at = (orig: number, low: number, high: number) =>
      ropeInvFreq({
        headDim: 2, ropeTheta: 10000,
        ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig },
      })[0];
    const twoPi = Math.fround(2 * Math.PI);
    expectRel(at(twoPi, 1, 4), 1 / 8, 1e-6); // wavelength == orig / low: medium, smooth = 0
    expectRel(at(4 * twoPi, 1, 4), 1, 1e-6); // wavelength == orig / high: medium, smooth = 1
  });

  it('rejects an odd head dimension', () => {
    expect(() => ropeInvFreq({ headDim: 7, ropeTheta: 10000, ropeScaling: null })).toThrow(/headDim/);
  });
});

describe('ropeTables', () => {
  it('cos/sin [T, headDim] with both halves repeating pos * inv_freq', () => {
    const inv = ropeInvFreq({ headDim: 4, ropeTheta: 100, ropeScaling: null }); // [1, 0.1]
    const { cos, sin } = ropeTables(inv, positionRange(2, 2)); // positions 2, 3
    expect(cos.length).toBe(8);
    // row 0 (position 2): angles [2, 0.2, 2, 0.2]; row 1 (position 3): [3, 0.3, 3, 0.3]
    const angles = [2, 0.2, 2, 0.2, 3, 0.3, 3, 0.3];
    angles.forEach((a, i) => {
      expect(cos[i]).toBeCloseTo(Math.cos(a), 6);
      expect(sin[i]).toBeCloseTo(Math.sin(a), 6);
    });
  });

  it('angles are float32(pos * inv_freq), as HF computes them at long positions', () => {
    const inv = ropeInvFreq({ headDim: 2, ropeTheta: 10000, ropeScaling: { type: 'linear', factor: 3 } });
    const pos = 100003;
    const { cos } = ropeTables(inv, [pos]);
    expect(cos[0]).toBe(Math.fround(Math.cos(Math.fround(pos * inv[0]))));
  });
});
