-- Meridian Trust shift rota (fictional, game material).
-- Safe to run more than once: tables are created only if missing and rows are upserted by id.

CREATE TABLE IF NOT EXISTS guards (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    access_level INTEGER NOT NULL,
    years_of_service INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS shifts (
    id INTEGER PRIMARY KEY,
    guard_id INTEGER NOT NULL REFERENCES guards(id),
    day TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT NOT NULL,
    post TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS access_levels (
    level INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    areas TEXT NOT NULL
);

INSERT OR REPLACE INTO access_levels (level, title, areas) VALUES
    (1, 'Visitor Escort', 'lobby, banking hall'),
    (2, 'Floor Guard', 'lobby, banking hall, loading dock, canteen'),
    (3, 'Senior Guard', 'all public floors, loading dock, operations corridor, archive hall'),
    (4, 'Shift Supervisor', 'all floors above B2, monitoring room, plant room'),
    (5, 'Vault Warden', 'everything, including vault corridor, service lift below B1, vault antechamber');

INSERT OR REPLACE INTO guards (id, name, access_level, years_of_service) VALUES
    (1, 'Marta Quill', 5, 22),
    (2, 'Desmond Hale', 4, 15),
    (3, 'Priya Okonjo', 3, 9),
    (4, 'Tobias Fenwick', 2, 4),
    (5, 'Lena Marsh', 3, 11),
    (6, 'Rufus Delacroix', 1, 1),
    (7, 'Ingrid Sollen', 4, 17),
    (8, 'Oscar Pimm', 2, 6),
    (9, 'Yusuf Arden', 1, 2),
    (10, 'Clara Beckwith', 3, 8),
    (11, 'Harlan Vose', 5, 27),
    (12, 'Nell Tamsin', 2, 3);

INSERT OR REPLACE INTO shifts (id, guard_id, day, start_time, end_time, post) VALUES
    (1, 1, 'Monday', '06:00', '14:00', 'vault corridor'),
    (2, 4, 'Monday', '06:00', '14:00', 'lobby'),
    (3, 7, 'Monday', '14:00', '22:00', 'monitoring room'),
    (4, 9, 'Monday', '14:00', '22:00', 'lobby'),
    (5, 2, 'Monday', '22:00', '06:00', 'monitoring room'),
    (6, 8, 'Monday', '22:00', '06:00', 'loading dock'),
    (7, 3, 'Monday', '22:00', '06:00', 'vault corridor'),
    (8, 11, 'Tuesday', '06:00', '14:00', 'vault corridor'),
    (9, 6, 'Tuesday', '06:00', '14:00', 'lobby'),
    (10, 5, 'Tuesday', '14:00', '22:00', 'loading dock'),
    (11, 12, 'Tuesday', '14:00', '22:00', 'lobby'),
    (12, 7, 'Tuesday', '22:00', '06:00', 'monitoring room'),
    (13, 4, 'Tuesday', '22:00', '06:00', 'lobby'),
    (14, 10, 'Tuesday', '22:00', '06:00', 'vault corridor'),
    (15, 1, 'Wednesday', '06:00', '14:00', 'vault corridor'),
    (16, 9, 'Wednesday', '06:00', '14:00', 'lobby'),
    (17, 2, 'Wednesday', '14:00', '22:00', 'monitoring room'),
    (18, 8, 'Wednesday', '14:00', '22:00', 'loading dock'),
    (19, 11, 'Wednesday', '22:00', '06:00', 'vault corridor'),
    (20, 12, 'Wednesday', '22:00', '06:00', 'lobby'),
    (21, 5, 'Wednesday', '22:00', '06:00', 'monitoring room'),
    (22, 11, 'Thursday', '06:00', '14:00', 'vault corridor'),
    (23, 4, 'Thursday', '06:00', '14:00', 'lobby'),
    (24, 10, 'Thursday', '14:00', '22:00', 'monitoring room'),
    (25, 6, 'Thursday', '14:00', '22:00', 'lobby'),
    (26, 7, 'Thursday', '22:00', '06:00', 'monitoring room'),
    (27, 8, 'Thursday', '22:00', '06:00', 'loading dock'),
    (28, 3, 'Thursday', '22:00', '06:00', 'vault corridor'),
    (29, 1, 'Friday', '06:00', '14:00', 'vault corridor'),
    (30, 12, 'Friday', '06:00', '14:00', 'lobby'),
    (31, 2, 'Friday', '14:00', '22:00', 'monitoring room'),
    (32, 9, 'Friday', '14:00', '22:00', 'lobby'),
    (33, 6, 'Friday', '22:00', '06:00', 'monitoring room'),
    (34, 4, 'Friday', '22:00', '06:00', 'loading dock'),
    (35, 10, 'Friday', '22:00', '06:00', 'vault corridor'),
    (36, 3, 'Friday', '22:00', '06:00', 'lobby'),
    (37, 11, 'Saturday', '06:00', '14:00', 'vault corridor'),
    (38, 8, 'Saturday', '06:00', '14:00', 'lobby'),
    (39, 5, 'Saturday', '14:00', '22:00', 'monitoring room'),
    (40, 12, 'Saturday', '14:00', '22:00', 'loading dock'),
    (41, 2, 'Saturday', '22:00', '06:00', 'monitoring room'),
    (42, 9, 'Saturday', '22:00', '06:00', 'lobby'),
    (43, 1, 'Saturday', '22:00', '06:00', 'vault corridor'),
    (44, 7, 'Sunday', '06:00', '14:00', 'monitoring room'),
    (45, 6, 'Sunday', '06:00', '14:00', 'lobby'),
    (46, 3, 'Sunday', '14:00', '22:00', 'vault corridor'),
    (47, 4, 'Sunday', '14:00', '22:00', 'loading dock'),
    (48, 10, 'Sunday', '22:00', '06:00', 'monitoring room'),
    (49, 5, 'Sunday', '22:00', '06:00', 'vault corridor'),
    (50, 8, 'Sunday', '22:00', '06:00', 'lobby');
