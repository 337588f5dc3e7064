package postgres

// SetMigrations replaces the schema history until the returned function
// restores it.
func SetMigrations(m []string) (restore func()) {
	orig := migrations
	migrations = m
	return func() { migrations = orig }
}

// Migrations returns the schema history.
func Migrations() []string { return migrations }
