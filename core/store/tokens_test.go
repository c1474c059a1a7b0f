package store

import (
	"errors"
	"testing"
	"time"
)

func TestTokens(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if list, err := s.Tokens(); err != nil || len(list) != 0 {
		t.Fatalf("Tokens of a new store: %v, %v", list, err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	for _, tok := range []Token{{ID: "1", Name: "ci", Role: RoleTrigger, SHA256: "aa", CreatedAt: now}, {ID: "2", Name: "bob", Role: RoleRead, SHA256: "bb"}} {
		if err := s.CreateToken(tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateToken(Token{ID: "3", Name: "ci", Role: RoleAdmin}); !errors.Is(err, ErrTokenExists) {
		t.Errorf("a second token named ci: %v, want ErrTokenExists", err)
	}
	list, err := s.Tokens()
	if err != nil || len(list) != 2 || list[0].Name != "bob" || list[1].Role != RoleTrigger || !list[1].CreatedAt.Equal(now) {
		t.Fatalf("Tokens: %+v, %v", list, err)
	}
	if got, err := s.RevokeToken("ci"); err != nil || got.ID != "1" {
		t.Errorf("RevokeToken: %+v, %v", got, err)
	}
	if _, err := s.RevokeToken("ci"); !errors.Is(err, ErrTokenNotFound) {
		t.Errorf("revoking twice: %v, want ErrTokenNotFound", err)
	}
}

func TestRoles(t *testing.T) {
	allows := map[[2]Role]bool{
		{RoleRead, RoleRead}: true, {RoleRead, RoleTrigger}: false, {RoleRead, RoleAdmin}: false,
		{RoleTrigger, RoleRead}: true, {RoleTrigger, RoleTrigger}: true, {RoleTrigger, RoleAdmin}: false,
		{RoleAdmin, RoleRead}: true, {RoleAdmin, RoleTrigger}: true, {RoleAdmin, RoleAdmin}: true,
		{"", RoleRead}: false, {"root", RoleRead}: false,
	}
	for pair, want := range allows {
		if got := pair[0].Allows(pair[1]); got != want {
			t.Errorf("%q.Allows(%q) = %v, want %v", pair[0], pair[1], got, want)
		}
	}
	if r, err := ParseRole("trigger"); err != nil || r != RoleTrigger {
		t.Errorf("ParseRole(trigger) = %q, %v", r, err)
	}
	if _, err := ParseRole("root"); err == nil {
		t.Errorf("ParseRole(root) succeeded")
	}
}
