package bench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Colors of the plot's series.
var (
	colorGoodput = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colorRecv    = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	colorMachine = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}
)

// WritePlot writes a PNG with two bar charts, one bar group per row: goodput
// in Gbit/s, and CPU seconds per GB (the measured process's and the whole
// machine's). Bars are medians; whiskers span min to max.
func (rep *Report) WritePlot(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.writePlot(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (rep *Report) writePlot(w io.Writer) error {
	names := make([]string, len(rep.Rows))
	for i, r := range rep.Rows {
		names[i] = r.ID
	}
	pick := func(get func(Figures) Figure) []Figure {
		fs := make([]Figure, len(rep.Rows))
		for i, r := range rep.Rows {
			fs[i] = get(r.Figures)
		}
		return fs
	}

	top := plot.New()
	top.Title.Text = fmt.Sprintf("xdevmem bench: goodput (median of %d, whiskers min–max)", rep.Runs)
	top.Y.Label.Text = "Gbit/s"
	if err := addBars(top, pick(func(f Figures) Figure { return f.Gbps }), 0, colorGoodput, "", 22); err != nil {
		return err
	}
	top.NominalX(names...)

	bottom := plot.New()
	bottom.Title.Text = "CPU seconds per GB transferred"
	bottom.Y.Label.Text = "CPU s/GB"
	if err := addBars(bottom, pick(func(f Figures) Figure { return f.LocalCPUPerGB }), -0.18, colorRecv, "measured side, this process (getrusage)", 14); err != nil {
		return err
	}
	if err := addBars(bottom, pick(func(f Figures) Figure { return f.MachineCPUPerGB }), 0.18, colorMachine, "whole machine (/proc/stat)", 14); err != nil {
		return err
	}
	bottom.NominalX(names...)
	bottom.Legend.Top = true

	for _, p := range []*plot.Plot{top, bottom} {
		p.X.Tick.Label.Rotation = math.Pi / 9
		p.X.Tick.Label.XAlign = draw.XRight
		p.X.Tick.Label.YAlign = draw.YCenter
		p.Y.Min = 0
		p.Y.Max *= 1.12 // room for the value labels
		p.Add(plotter.NewGrid())
	}

	const width, height = 11 * vg.Inch, 9 * vg.Inch
	img := vgimg.New(width, height)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(10), PadY: vg.Points(14)}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	_, err := vgimg.PngCanvas{Canvas: img}.WriteTo(w)
	return err
}

// addBars adds one bar series with min–max whiskers, shifted by dx data
// units from the nominal positions. Rows without a figure get no bar.
func addBars(p *plot.Plot, fs []Figure, dx float64, c color.Color, label string, widthPt float64) error {
	vals := make(plotter.Values, len(fs))
	var pts plotter.XYs
	var errs plotter.YErrors
	for i, f := range fs {
		if !f.Valid() {
			continue
		}
		vals[i] = f.Median
		pts = append(pts, plotter.XY{X: float64(i) + dx, Y: f.Median})
		errs = append(errs, struct{ Low, High float64 }{f.Median - f.Min, f.Max - f.Median})
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(widthPt))
	if err != nil {
		return err
	}
	bars.XMin = dx
	bars.Color = c
	bars.LineStyle.Width = 0
	p.Add(bars)
	if label != "" {
		p.Legend.Add(label, bars)
	}
	if len(pts) > 0 {
		eb, err := plotter.NewYErrorBars(struct {
			plotter.XYs
			plotter.YErrors
		}{pts, errs})
		if err != nil {
			return err
		}
		p.Add(eb)
		texts := make([]string, len(pts))
		above := make(plotter.XYs, len(pts))
		for i, pt := range pts {
			texts[i] = fmt.Sprintf("%.2f", pt.Y)
			above[i] = plotter.XY{X: pt.X, Y: pt.Y + errs[i].High}
		}
		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: above, Labels: texts})
		if err != nil {
			return err
		}
		for i := range labels.TextStyle {
			labels.TextStyle[i].XAlign = draw.XCenter
			labels.TextStyle[i].YAlign = draw.YBottom
		}
		p.Add(labels)
	}
	return nil
}
