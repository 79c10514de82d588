from django.contrib.staticfiles import finders
from django.template import Context, Template


def render(**context) -> str:
    template = Template('{% include "charts/_chart.html" with url=url title=title %}')
    return template.render(Context(context))


class TestChartInclude:
    def test_it_renders_a_box_that_loads_its_figure_from_the_url(self):
        html = render(url="/api/v1/allocations/abc/charts/burndown/?start=2026-01-01", title="SUs")

        assert 'data-chart-url="/api/v1/allocations/abc/charts/burndown/?start=2026-01-01"' in html
        assert '<figcaption class="chart-title">SUs</figcaption>' in html
        assert '<script src="/static/charts/chart.js" defer></script>' in html

    def test_plotly_comes_from_the_portals_own_static_files(self):
        html = render(url="/x/", title="t")
        assert 'data-plotly-src="/static/plotly/plotly.min.js"' in html
        assert "cdn" not in html.lower() and "https://" not in html

    def test_the_title_is_escaped(self):
        html = render(url="/x/", title="<b>&</b>")
        assert "&lt;b&gt;&amp;&lt;/b&gt;" in html

    def test_the_script_is_served_locally(self):
        assert finders.find("charts/chart.js")
