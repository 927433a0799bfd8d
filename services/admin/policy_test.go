package admin

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A fabricated history per case: which snapshots the policy keeps, and the
// rule named for each decision.
func TestPolicy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy Policy
		// newest first: "2026-11-25 18:00 keep keep-daily 2026-11-25"
		history []string
	}{
		{"keep-last", Policy{Last: 3}, []string{
			"2026-11-25 18:00 keep keep-last (1 of 3)",
			"2026-11-25 06:00 keep keep-last (2 of 3)",
			"2026-11-24 12:00 keep keep-last (3 of 3)",
			"2026-11-22 09:00 remove no keep rule selects it",
			"2026-11-20 10:00 remove no keep rule selects it",
		}},
		{"keep-daily: newest of each day, until N days", Policy{Daily: 3}, []string{
			"2026-11-25 18:00 keep keep-daily 2026-11-25",
			"2026-11-25 06:00 remove keep-daily: a newer snapshot of 2026-11-25 is kept",
			"2026-11-24 12:00 keep keep-daily 2026-11-24",
			"2026-11-22 09:00 keep keep-daily 2026-11-22",
			"2026-11-22 08:00 remove keep-daily: a newer snapshot of 2026-11-22 is kept",
			"2026-11-20 10:00 remove no keep rule selects it",
		}},
		{"a day covered by keep-last does not count for keep-daily", Policy{Last: 1, Daily: 2}, []string{
			"2026-11-25 18:00 keep keep-last (1 of 1)",
			"2026-11-25 06:00 remove no keep rule selects it",
			"2026-11-24 12:00 keep keep-daily 2026-11-24",
			"2026-11-23 10:00 keep keep-daily 2026-11-23",
			"2026-11-22 10:00 remove no keep rule selects it",
		}},
		{"keep-weekly after keep-daily (ISO weeks)", Policy{Daily: 1, Weekly: 2}, []string{
			"2026-11-25 10:00 keep keep-daily 2026-11-25",     // Wednesday, week 48
			"2026-11-23 10:00 remove no keep rule selects it", // Monday, week 48: covered
			"2026-11-20 10:00 keep keep-weekly 2026-W47",
			"2026-11-19 10:00 remove keep-weekly: a newer snapshot of 2026-W47 is kept",
			"2026-11-09 10:00 keep keep-weekly 2026-W46",
			"2026-11-02 10:00 remove no keep rule selects it",
		}},
		{"keep-monthly and keep-yearly across years", Policy{Monthly: 2, Yearly: 2}, []string{
			"2026-03-10 10:00 keep keep-monthly 2026-03",
			"2026-02-01 10:00 keep keep-monthly 2026-02",
			"2026-01-15 10:00 remove no keep rule selects it",
			"2025-12-31 23:59 keep keep-yearly 2025",
			"2025-06-01 10:00 remove keep-yearly: a newer snapshot of 2025 is kept",
			"2024-05-05 10:00 keep keep-yearly 2024",
			"2023-05-05 10:00 remove no keep rule selects it",
		}},
		{"keep-hourly", Policy{Hourly: 2}, []string{
			"2026-11-25 10:50 keep keep-hourly 2026-11-25T10h",
			"2026-11-25 10:10 remove keep-hourly: a newer snapshot of 2026-11-25T10h is kept",
			"2026-11-25 09:59 keep keep-hourly 2026-11-25T09h",
			"2026-11-25 08:00 remove no keep rule selects it",
		}},
		{"every rule at once", Policy{Last: 1, Hourly: 1, Daily: 1, Weekly: 1, Monthly: 1, Yearly: 1}, []string{
			"2026-11-25 10:50 keep keep-last (1 of 1)",
			"2026-11-25 09:10 keep keep-hourly 2026-11-25T09h",
			"2026-11-24 09:10 keep keep-daily 2026-11-24",
			"2026-11-23 09:10 remove no keep rule selects it", // week 48 is covered
			"2026-11-16 09:10 keep keep-weekly 2026-W47",
			"2026-10-16 09:10 keep keep-monthly 2026-10",
			"2025-10-16 09:10 keep keep-yearly 2025",
			"2024-10-16 09:10 remove no keep rule selects it",
		}},
		{"no option keeps everything", Policy{}, []string{
			"2026-11-25 10:50 keep no keep option given: everything is kept",
			"2020-01-01 00:00 keep no keep option given: everything is kept",
		}},
		{"more rules than snapshots", Policy{Last: 10, Daily: 10}, []string{
			"2026-11-25 10:50 keep keep-last (1 of 10)",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var times []time.Time
			var want []string
			for _, line := range tc.history {
				f := strings.SplitN(line, " ", 4)
				when, err := time.Parse("2006-01-02 15:04", f[0]+" "+f[1])
				if err != nil {
					t.Fatal(err)
				}
				times = append(times, when)
				want = append(want, f[2]+" "+f[3])
			}
			for i, v := range decide(tc.policy, times) {
				got := fmt.Sprintf("%s %s", map[bool]string{true: "keep", false: "remove"}[v.keep], v.reason)
				if got != want[i] {
					t.Errorf("%s: %q, want %q", times[i].Format(time.DateTime), got, want[i])
				}
			}
		})
	}
}
